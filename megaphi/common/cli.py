"""The runner of every ``python -m`` entry point.

    @entry_point
    def main(argv: Sequence[str] | None = None) -> int: ...

    if __name__ == "__main__":
        sys.exit(main())

What the user can fix ends the command with one line ``error: <message>`` on stderr and exit status
2: a :class:`~megaphi.common.errors.UserError` raised anywhere below ``main``, and an ``OSError``
that the operating system raised about a named path (a missing directory, no permission, a full
disk). Anything else propagates with its traceback, because it is a bug. ``main`` itself only
parses arguments, calls library functions and reports.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence, TypeVar

from megaphi.common.errors import UserError

EXIT_USER_ERROR = 2

Main = TypeVar("Main", bound=Callable[..., int])


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        target = f"{error.filename} -> {error.filename2}" if error.filename2 is not None else f"{error.filename}"
        return f"{target}: {error.strerror}"
    return None


def report_user_error(message: str) -> int:
    """Print ``error: <message>`` and return the exit status for a user error."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def entry_point(main: Main) -> Main:
    """Wrap a ``main(argv) -> int`` so that user errors end it with one line and exit status 2."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None, *args: Any, **kwargs: Any) -> int:
        try:
            return main(argv, *args, **kwargs)
        except (UserError, OSError) as error:
            message = user_error_message(error)
            if message is None:
                raise
            return report_user_error(message)

    # run takes and returns what main does (functools.wraps copies its signature for --help and
    # introspection); a TypeVar bound to a Callable cannot say so to the type checker
    return run  # type: ignore[return-value]
