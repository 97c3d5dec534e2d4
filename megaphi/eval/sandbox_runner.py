"""The code that runs inside each sandbox, in one of three roles.

The sandboxed interpreter runs it as ``python -I -S -c <bootstrap> CODE_FD ROLE JOB_FD FD...``, where
CODE_FD is a memfd holding this file compiled by that same interpreter, so it must run on any Python
3.8+ with the standard library only, and import nothing of megaphi (not even ``json``: only its C
part). Its job (limits and sources, one JSON object) arrives on an inherited pipe, read to its end
and closed before any untrusted code runs.
It is one file, longer than most modules here, because the sandbox receives it whole as that one memfd:
the codec, the shared parts and the three roles cannot live in modules the sandbox would import.

Roles:
- ``candidate JOB REQUESTS REPLIES``: executes the untrusted program (prompt + completion) in a fresh
  module, says ``["ready"]`` (or ``["load-failed", type, message]``), then answers calls:
  ``["call", name, [args], [[key, value]...]]`` gets ``["return", value, [[index, changed arg]...]]``,
  ``["raise", type name, message, args or null]`` or, when the program quits, ``["exit", type, message]``.
- ``test JOB REQUESTS REPLIES VERDICT``: defines the prompt's own helpers from the prompt text, binds
  each entry point to a proxy that calls into the candidate, runs the tests, and writes a fixed
  verdict record to VERDICT, a pipe only it holds. No code of the candidate's ever runs here; only
  values decoded by ``decode`` cross over.
- ``program JOB VERDICT``: executes one whole program and reports whether ``exec`` returned normally,
  marked with a per-run token. The program shares the process with this harness, so one written to
  dig the token out of memory can forge the record: this mode is for programs whose author is not
  an adversary (``judge_programs`` is for the others).

The wire format: each message is a 4-byte big-endian length and an ASCII JSON document in which
None, bools, ints below 2**63, floats and strings are themselves and everything else is a list whose
first element is a tag: ``["l", ...]`` list, ``["t", ...]`` tuple, ``["s", ...]`` set, ``["f", ...]``
frozenset, ``["d", k1, v1, ...]`` dict, ``["b", hex]`` bytes, ``["B", hex]`` bytearray, ``["i", hex]``
big int, ``["c", re, im]`` complex, ``["r", start, stop, step]`` range, ``["q", numerator,
denominator]`` fractions.Fraction, ``["e", digits]`` decimal.Decimal, ``["T", name]`` one of the
built-in types themselves, ``["g", ...]`` an iterator's items (decoded as an iterator), ``["@", name]``
an object the shared setup code built in the candidate's process (from the test's side only).
``decode`` accepts nothing else, so no object with behaviour of its own can cross.
"""

from __future__ import annotations  # annotations stay unevaluated text: the runner runs on Python 3.8+

import _json  # the C parts of json only: importing json itself (and with it re) costs more than the rest
import os
import resource
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # for the type checker only: importing typing would cost every sandbox its start-up time
    from types import ModuleType
    from typing import Any, Callable, NoReturn

# Bound before any untrusted code runs, so that monkeypatching os, sys or builtins cannot redirect them.
_write = os.write
_read = os.read
_getpid = os.getpid
_exit = os._exit
_BaseException = BaseException
_DETAIL_LIMIT = 2000
MAX_DEPTH = 100  # nesting of a value on the wire
MAX_ITEMS = 1_000_000  # items taken from an iterator a candidate returns
BIG_INT = 1 << 63


class ProtocolError(Exception):
    """A message that is not the wire format."""


class Unsendable(Exception):
    """A value that is not plain data."""


# ---------------------------------------------------------------------------------------------- codec


class Shared:
    """Stands, on the test's side, for an object that the shared setup code built in the candidate's process."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return "<%s, in the candidate's process>" % self.name


class Handle:
    """Stands, on the test's side, for an object the candidate returned that is not plain data (an
    instance of its own class, say). The object stays in the candidate's process; passing the handle
    back in a call hands the candidate its own object. A handle has no behaviour of its own: it
    equals only itself."""

    __slots__ = ("number", "type_name")

    def __init__(self, number: int, type_name: str) -> None:
        self.number, self.type_name = number, type_name

    def __repr__(self) -> str:
        return "<a %s object in the candidate's process>" % self.type_name


def encode(value: Any, kept: list[Any] | None = None, depth: int = 0) -> Any:
    """A value as wire data. An object that is not plain data is appended to ``kept`` and travels as
    a handle (the candidate's side); without ``kept`` (the test's side) it is Unsendable."""
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        return value if -BIG_INT < value < BIG_INT else ["i", format(value, "x")]
    if depth >= MAX_DEPTH:
        raise Unsendable("a value nested deeper than %d levels" % MAX_DEPTH)
    depth += 1
    if kind is list:
        return ["l"] + [encode(item, kept, depth) for item in value]
    if kind is tuple:
        return ["t"] + [encode(item, kept, depth) for item in value]
    if kind is dict:
        out = ["d"]
        for key, item in value.items():
            out.append(encode(key, kept, depth))
            out.append(encode(item, kept, depth))
        return out
    if kind is set or kind is frozenset:
        return ["s" if kind is set else "f"] + [encode(item, kept, depth) for item in value]
    if kind is bytes or kind is bytearray:
        return ["b" if kind is bytes else "B", value.hex()]
    if kind is complex:
        return ["c", value.real, value.imag]
    if kind is range:
        return ["r", encode(value.start), encode(value.stop), encode(value.step)]
    if kind is Shared:
        return ["@", value.name]
    if kind is Handle:
        return ["h", value.number]
    if kind is type and value in _BUILTIN_TYPES:  # e.g. MBPP's "remove the elements of type int"
        return ["T", value.__name__]
    # Exact numbers of the standard library: rebuilt from ints or digits, never from the object.
    fractions, decimal = sys.modules.get("fractions"), sys.modules.get("decimal")
    if fractions is not None and kind is getattr(fractions, "Fraction", None):
        return ["q", encode(value.numerator), encode(value.denominator)]
    if decimal is not None and kind is getattr(decimal, "Decimal", None):
        return ["e", str(value)]
    # Subclasses of plain types (namedtuple, Counter, OrderedDict, IntEnum...) travel as their base
    # type, read through the base type's own methods, as == would mostly treat them.
    base: Any  # each plain type in turn, called on the value through its own methods
    for base in (int, float, str):
        if isinstance(value, base):
            return encode(base.__new__(base, value), kept, depth)
    if isinstance(value, dict):
        return encode(dict(dict.items(value)), kept, depth)
    for base in (list, tuple, set, frozenset, bytes, bytearray):
        if isinstance(value, base):
            return encode(base(base.__iter__(value)), kept, depth)
    if hasattr(type(value), "__next__") or type(value).__name__ in ("dict_keys", "dict_values", "dict_items"):
        items: list[Any] = []
        for item in value:
            if len(items) >= MAX_ITEMS:
                raise Unsendable("an iterator of more than %d items" % MAX_ITEMS)
            items.append(encode(item, kept, depth))
        return ["g"] + items
    if kept is None:
        raise Unsendable("an object of type %s" % type(value).__name__)
    kept.append(value)
    return ["h", len(kept) - 1, type(value).__name__[:100]]


_SCALARS = (type(None), bool, int, float, str)
_BUILTIN_TYPES = (
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    list,
    tuple,
    dict,
    set,
    frozenset,
    range,
    type(None),
    object,
)
_BUILTIN_TYPE_NAMES = {kind.__name__: kind for kind in _BUILTIN_TYPES}


def decode(data: Any, shared: dict[str, Any] | None = None, kept: list[Any] | None = None, depth: int = 0) -> Any:
    """Wire data as a value, refusing anything that is not exactly the format. On the candidate's side
    ``shared`` (its module's names) and ``kept`` (objects it returned) resolve what the test refers to;
    on the test's side a handle becomes a ``Handle``."""
    if type(data) in _SCALARS:
        return data
    if type(data) is not list or not data or type(data[0]) is not str or depth >= MAX_DEPTH:
        raise ProtocolError("malformed value")
    tag, items, depth = data[0], data[1:], depth + 1
    try:
        if tag == "l":
            return [decode(item, shared, kept, depth) for item in items]
        if tag == "t":
            return tuple(decode(item, shared, kept, depth) for item in items)
        if tag == "s":
            return {decode(item, shared, kept, depth) for item in items}
        if tag == "f":
            return frozenset(decode(item, shared, kept, depth) for item in items)
        if tag == "g":
            return iter([decode(item, shared, kept, depth) for item in items])
        if tag == "d":
            if len(items) % 2:
                raise ProtocolError("malformed dict")
            return {
                decode(items[i], shared, kept, depth): decode(items[i + 1], shared, kept, depth)
                for i in range(0, len(items), 2)
            }
        if tag in ("b", "B") and len(items) == 1 and type(items[0]) is str:
            return (bytes if tag == "b" else bytearray).fromhex(items[0])
        if tag == "i" and len(items) == 1 and type(items[0]) is str:
            return int(items[0], 16)
        if tag == "c" and len(items) == 2 and all(type(item) in (int, float) for item in items):
            return complex(items[0], items[1])
        if tag == "r" and len(items) == 3:
            bounds = [decode(item, None, None, depth) for item in items]
            if all(type(bound) is int for bound in bounds):
                return range(*bounds)
        if tag == "q" and len(items) == 2:
            numerator, denominator = (decode(item, None, None, depth) for item in items)
            if type(numerator) is int and type(denominator) is int and denominator != 0:
                import fractions  # only where a test or an answer holds one: it costs startup time

                return fractions.Fraction(numerator, denominator)
        if tag == "e" and len(items) == 1 and type(items[0]) is str and len(items[0]) <= 10000:
            import decimal

            try:
                return decimal.Decimal(items[0])
            except decimal.InvalidOperation:
                raise ProtocolError("malformed decimal") from None
        if tag == "T" and len(items) == 1 and type(items[0]) is str and items[0] in _BUILTIN_TYPE_NAMES:
            return _BUILTIN_TYPE_NAMES[items[0]]
        if tag == "@" and shared is not None and len(items) == 1 and type(items[0]) is str and items[0] in shared:
            return shared[items[0]]
        if tag == "h" and kept is not None and len(items) == 1 and type(items[0]) is int and 0 <= items[0] < len(kept):
            return kept[items[0]]
        if tag == "h" and kept is None and len(items) == 2 and type(items[0]) is int and type(items[1]) is str:
            return Handle(items[0], items[1])
    except TypeError:  # an unhashable key or set member
        raise ProtocolError("malformed value") from None
    except ValueError:
        raise ProtocolError("malformed value") from None
    raise ProtocolError("unknown tag %r" % tag[:20])


def _reject_object(pairs: list[tuple[str, Any]]) -> NoReturn:
    raise ProtocolError("JSON objects are not part of the format")


class _Parsing:
    """What the C JSON scanner asks of its caller: strict strings, exact ints and floats."""

    strict = True
    object_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity

    def __init__(self, objects: bool) -> None:
        self.object_pairs_hook = None if objects else _reject_object


# typeshed wants a make_scanner as the scanner's context; the C scanner reads only the attributes above.
_scan_message = _json.make_scanner(_Parsing(objects=False))  # type: ignore[arg-type]
_scan_job = _json.make_scanner(_Parsing(objects=True))  # type: ignore[arg-type]
# No `default` hook: only wire data, made of JSON's own types, is ever dumped.
_encode_json = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, True)  # type: ignore[arg-type]


def parse_json(text: str, scan: Callable[[str, int], tuple[Any, int]] = _scan_message) -> Any:
    """One JSON document, nothing before or after it."""
    try:
        value, end = scan(text, 0)
    except StopIteration:
        raise ProtocolError("a message that is not JSON") from None
    except (ValueError, RecursionError):
        raise ProtocolError("a message that is not JSON") from None
    if end != len(text):
        raise ProtocolError("a message with trailing data")
    return value


def dump_json(value: Any) -> str:
    return "".join(_encode_json(value, 0))


def send(fd: int, message: Any) -> None:
    data = dump_json(message).encode("ascii")
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[_write(fd, data) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = _read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, limit: int) -> Any:
    """The next message, or None at the end of the stream; ProtocolError when malformed or over ``limit``."""
    header = _read_exactly(fd, 4)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > limit:
        raise ProtocolError("a message of %d bytes, more than the %d allowed" % (size, limit))
    data = _read_exactly(fd, size)
    if data is None:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("a message that is not ASCII") from None
    return parse_json(text)


# ---------------------------------------------------------------------------------------- shared parts


def _read_job(fd: int) -> dict[str, Any]:
    chunks = []
    while True:
        chunk = _read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return parse_json(b"".join(chunks).decode("utf-8", "surrogatepass"), _scan_job)


def _set_limits(job: dict[str, Any]) -> None:
    # Soft CPU limit sends SIGXCPU (reported as a timeout); the hard one a second later is SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_s"], job["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (job["address_space"], job["address_space"]))
    # Counted per user namespace, so this caps the processes of this sandbox alone (the cgroup too).
    resource.setrlimit(resource.RLIMIT_NPROC, (job["max_processes"], job["max_processes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["max_file"], job["max_file"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (job["max_open_files"], job["max_open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:  # sys.__stdout__ and sys.__stderr__ may be None
                stream.flush()
        except _BaseException:
            pass


def _message(error: BaseException) -> str:
    try:
        return str(error)[:_DETAIL_LIMIT]
    except _BaseException:
        return "(a message that could not be formatted)"


def _describe(error: BaseException) -> str:
    return ("%s: %s" % (type(error).__name__, _message(error)))[:_DETAIL_LIMIT]


def _print_traceback(error: BaseException, source: str, filename: str) -> None:
    try:
        import linecache
        import traceback

        lines = source.splitlines(True)  # so that the traceback quotes the program's lines
        linecache.cache[filename] = (len(source), None, lines, filename)
        # The harness's own frames (its exec, a proxy's call) are noise to the reader.
        report = traceback.TracebackException(type(error), error, error.__traceback__)
        report.stack = traceback.StackSummary.from_list(
            [frame for frame in report.stack if frame.filename != "<sandbox_runner>"]
        )
        sys.stderr.write("".join(report.format()))
    except _BaseException:
        pass


def _fresh_module(name: str) -> ModuleType:
    module = type(sys)(name)  # registered so that pickle and dataclasses find it
    sys.modules[name] = module
    return module


# ----------------------------------------------------------------------------------------------- roles


def run_program(job: dict[str, Any], verdict_fd: int) -> NoReturn:
    # The per-run token marks the harness's own record among whatever the program writes to the pipe.
    token = job["token"].encode("ascii") + b" "
    del job["token"]
    harness_pid = _getpid()
    memory_verdict = token + b"memory MemoryError"  # built up front: after a MemoryError there may be no room

    def report(verdict: bytes) -> None:
        if _getpid() != harness_pid:  # a forked copy of the harness never speaks for the program
            _exit(1)
        try:
            _write(verdict_fd, verdict[:_DETAIL_LIMIT])
        except _BaseException:
            _exit(1)

    source = job["program"]
    module = _fresh_module("__program__")
    try:
        exec(compile(source, "<program>", "exec"), module.__dict__)
    except MemoryError:
        report(memory_verdict)
        _flush_std_streams()
        _exit(1)
    except _BaseException as error:  # SystemExit and KeyboardInterrupt included: the program did not finish
        _print_traceback(error, source, "<program>")
        detail = _describe(error)
        _flush_std_streams()
        report(token + b"failed " + detail.encode("utf-8", "replace"))
        _exit(1)
    _flush_std_streams()
    report(token + b"passed")
    _exit(0)


def run_candidate(job: dict[str, Any], requests_fd: int, replies_fd: int) -> NoReturn:
    """Load the untrusted program, then answer calls until the test side hangs up."""
    source, limit = job["candidate"], job["message_limit"]
    module = _fresh_module("__program__")
    try:
        exec(compile(source, "<candidate>", "exec"), module.__dict__)
    except _BaseException as error:  # an early exit at module level is a failure to load too
        _print_traceback(error, source, "<candidate>")
        _flush_std_streams()
        send(replies_fd, ["load-failed", type(error).__name__, _describe(error)])
        _exit(1)
    send(replies_fd, ["ready"])
    kept: list[Any] = []  # objects returned as handles, alive until the test hangs up
    while True:
        try:
            request = receive(requests_fd, limit)
        except ProtocolError:
            _exit(1)
        if request is None:
            _flush_std_streams()
            _exit(0)
        _, name, wire_args, wire_kwargs = request
        try:
            args = [decode(arg, module.__dict__, kept) for arg in wire_args]
            kwargs = {key: decode(value, module.__dict__, kept) for key, value in wire_kwargs}
            function = module.__dict__.get(name)
            if function is None:
                raise NameError("name %r is not defined" % name)
        except _BaseException as error:
            send(replies_fd, _raised(error))
            continue
        try:
            result = function(*args, **kwargs)
            reply = ["return", encode(result, kept)]
            # Arguments changed in place travel back, so tests that check mutation see it.
            changed: list[Any] = []
            for index, arg in enumerate(args):
                if type(arg) in (list, dict, set, bytearray):
                    now = encode(arg, kept)
                    if now != wire_args[index]:
                        changed.append([index, now])
            reply.append(changed)
        except (SystemExit, KeyboardInterrupt, GeneratorExit) as error:  # the program quit mid-test
            _flush_std_streams()
            send(replies_fd, ["exit", type(error).__name__, _describe(error)])
            _exit(1)
        except Unsendable as error:
            reply = _raised(TypeError("the candidate returned %s, which is not plain data" % error))
        except _BaseException as error:
            reply = _raised(error)
        try:
            send(replies_fd, reply)
        except (ValueError, OverflowError) as error:  # e.g. a float the encoder cannot write
            send(replies_fd, _raised(TypeError(_message(error))))
        _flush_std_streams()


def _raised(error: BaseException) -> list[Any]:
    """The reply for an exception: its type's name, its message, and its arguments when they are plain data."""
    try:
        args = encode(tuple(error.args))
    except _BaseException:
        args = None
    return ["raise", type(error).__name__, _message(error), args]


class CandidateError(Exception):
    """An exception the candidate raised whose type is not a built-in one."""


def run_test(job: dict[str, Any], requests_fd: int, replies_fd: int, verdict_fd: int) -> NoReturn:
    """Run the tests against proxies of the candidate's functions; write the verdict."""
    limit = job["message_limit"]

    def verdict(record: bytes, status: int) -> NoReturn:
        _flush_std_streams()
        _write(verdict_fd, record[:_DETAIL_LIMIT])
        _exit(status)

    def fail(detail: str) -> NoReturn:
        verdict(b"failed " + detail.encode("utf-8", "replace"), 1)

    def next_reply() -> list[Any]:
        try:
            reply = receive(replies_fd, limit)
        except ProtocolError as error:
            fail("the candidate broke the protocol (%s)" % error)
        if reply is None:
            verdict(b"candidate-gone", 1)
        if type(reply) is not list or not reply or type(reply[0]) is not str:
            fail("the candidate broke the protocol (a reply that is not a message)")
        return reply

    first = next_reply()
    if first[0] == "load-failed" and len(first) == 3 and all(type(x) is str for x in first[1:]):
        fail(first[2])
    if first != ["ready"]:
        fail("the candidate broke the protocol (no ready message)")

    namespace = _fresh_module("__program__").__dict__
    import builtins

    def exception_from(type_name: str, message: str, args: Any) -> Exception:
        kind = getattr(builtins, type_name, None) if type_name.isidentifier() else None
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                return kind(*args) if type(args) is tuple else kind(message)
            except _BaseException:
                pass
        return CandidateError("%s: %s" % (type_name, message))

    def proxy(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                wire_args = [encode(arg) for arg in args]
                wire_kwargs = [[key, encode(value)] for key, value in kwargs.items()]
            except Unsendable as error:
                raise TypeError("the test passed %s, which cannot reach the candidate" % error) from None
            send(requests_fd, ["call", name, wire_args, wire_kwargs])
            reply = next_reply()
            try:
                if reply[0] == "return" and len(reply) == 3 and type(reply[2]) is list:
                    value = decode(reply[1])
                    for change in reply[2]:
                        _apply_change(args, change)
                    return value
                if reply[0] == "raise" and len(reply) == 4 and all(type(x) is str for x in reply[1:3]):
                    raise exception_from(reply[1], reply[2], None if reply[3] is None else decode(reply[3]))
                if reply[0] == "exit" and len(reply) == 3 and all(type(x) is str for x in reply[1:]):
                    fail("the candidate exited during a call (%s)" % reply[2])
            except ProtocolError as error:
                fail("the candidate broke the protocol (%s)" % error)
            fail("the candidate broke the protocol (an unknown reply)")

        call.__name__ = call.__qualname__ = name
        return call

    source = job["prompt"]
    tests = job["tests"]
    try:
        exec(compile(source, "<prompt>", "exec"), namespace)
        for name in job["shared"]:
            namespace[name] = Shared(name)
        for name in job["entry_points"]:
            namespace[name] = proxy(name)
        exec(compile(tests, "<test>", "exec"), namespace)
    except MemoryError:
        verdict(b"memory MemoryError", 1)
    except _BaseException as error:
        _print_traceback(error, tests, "<test>")
        fail(_describe(error))
    verdict(b"passed", 0)


def _apply_change(args: tuple[Any, ...], change: Any) -> None:
    """An argument the candidate changed in place: the test's own object gets the same contents."""
    if type(change) is not list or len(change) != 2 or type(change[0]) is not int or not 0 <= change[0] < len(args):
        raise ProtocolError("malformed argument change")
    target, value = args[change[0]], decode(change[1])
    if type(target) is not type(value):
        raise ProtocolError("an argument changed type")
    if type(target) in (list, bytearray):
        target[:] = value
    elif type(target) in (dict, set):
        target.clear()
        target.update(value)
    else:
        raise ProtocolError("an immutable argument changed")


def main() -> NoReturn:
    role, fds = sys.argv[1], [int(fd) for fd in sys.argv[2:]]
    job = _read_job(fds[0])
    _set_limits(job)
    if role == "program":
        run_program(job, fds[1])
    elif role == "candidate":
        run_candidate(job, fds[1], fds[2])
    elif role == "test":
        run_test(job, fds[1], fds[2], fds[3])
    _exit(3)


if __name__ == "__main__":
    main()
