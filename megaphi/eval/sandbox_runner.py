"""The harness that runs one program inside the sandbox.

It is passed to the sandboxed interpreter as ``python -I -c <this file's source> JOB_FD VERDICT_FD``,
so it must run on any Python 3.8+ with the standard library only, and import nothing of megaphi.

Protocol. JOB_FD holds ``token cpu_s address_space_bytes max_processes max_file_bytes\\n<source>``;
the harness reads it and closes it before the program runs. The harness sets the rlimits, compiles
and executes the program in a fresh module, and only when ``exec`` returns normally in the original
process does it write ``token passed`` to VERDICT_FD. Every other way out (``exit()``, ``SystemExit``,
``os._exit``, a signal, a fork that carries on alone) writes no ``passed`` verdict, and printing
"passed" on stdout means nothing because the verdict travels on its own pipe with a token the
program never sees through any file. A program that deliberately digs the token out of this
harness's memory could forge a verdict; it still cannot leave the sandbox.
"""
import os
import resource
import sys

# Bound before the program runs, so that monkeypatching os or builtins cannot redirect them.
_write = os.write
_getpid = os.getpid
_exit = os._exit
_MemoryError = MemoryError
_BaseException = BaseException
_DETAIL_LIMIT = 2000


def _read_job(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    header, _, source = b"".join(chunks).partition(b"\n")
    token, cpu_s, address_space, max_processes, max_file = header.split(b" ")
    return token, int(cpu_s), int(address_space), int(max_processes), int(max_file), source


def _set_limits(cpu_s, address_space, max_processes, max_file):
    # Soft CPU limit sends SIGXCPU (reported as a timeout); the hard one a second later is SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    # Counted per user namespace, so this caps the processes of this sandbox alone.
    resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file, max_file))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _flush_std_streams():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except _BaseException:
            pass


def main():
    job_fd, verdict_fd = int(sys.argv[1]), int(sys.argv[2])
    token, cpu_s, address_space, max_processes, max_file, source = _read_job(job_fd)
    harness_pid = _getpid()
    # Built up front: after a MemoryError there may be no room to format anything.
    memory_verdict = token + b" memory MemoryError"

    def report(verdict):
        if _getpid() != harness_pid:  # a forked copy of the harness never speaks for the program
            _exit(1)
        try:
            _write(verdict_fd, verdict[:_DETAIL_LIMIT])
        except _BaseException:
            _exit(1)

    _set_limits(cpu_s, address_space, max_processes, max_file)
    module = type(sys)("__program__")  # a fresh module, registered so that pickle and dataclasses find it
    sys.modules["__program__"] = module
    try:
        exec(compile(source, "<program>", "exec"), module.__dict__)
    except _MemoryError:
        report(memory_verdict)
        _flush_std_streams()
        _exit(1)
    except _BaseException as error:  # SystemExit and KeyboardInterrupt included: the program did not finish
        try:
            import linecache
            import traceback

            # So that the traceback quotes the program's lines.
            lines = source.decode("utf-8", "replace").splitlines(True)
            linecache.cache["<program>"] = (len(source), None, lines, "<program>")
            # Start at the program's frame: the harness's own frame is noise to the reader.
            traceback.print_exception(type(error), error, error.__traceback__.tb_next)
            detail = "%s: %s" % (type(error).__name__, error)
        except _BaseException:
            detail = "the program raised an exception that could not be formatted"
        _flush_std_streams()
        report(token + b" failed " + detail.encode("utf-8", "replace"))
        _exit(1)
    _flush_std_streams()
    report(token + b" passed")
    _exit(0)


if __name__ == "__main__":
    main()
