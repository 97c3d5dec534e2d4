"""The runner of every ``python -m`` entry point.

    @entry_point
    def main(argv: Sequence[str] | None = None) -> int: ...

    if __name__ == "__main__":
        sys.exit(main())

A :class:`~megaphi.common.errors.UserError` raised anywhere below ``main`` becomes one line
``error: <message>`` on stderr and exit status 2; anything else propagates with its traceback,
because it is a bug. ``main`` itself only parses arguments, calls library functions and reports.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence, TypeVar

from megaphi.common.errors import UserError

EXIT_USER_ERROR = 2

Main = TypeVar("Main", bound=Callable[..., int])


def report_user_error(error: UserError) -> int:
    """Print ``error: <message>`` and return the exit status for a user error."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def entry_point(main: Main) -> Main:
    """Wrap a ``main(argv) -> int`` so that user errors end it with one line and exit status 2."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None, *args: Any, **kwargs: Any) -> int:
        try:
            return main(argv, *args, **kwargs)
        except UserError as error:
            return report_user_error(error)

    return run  # type: ignore[return-value]
