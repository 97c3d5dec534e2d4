"""The one base of errors that a user can fix: a bad file, field, flag or a missing tool.

Every ``python -m`` entry point prints such an error as one ``error: ...`` line and exits 2
(:func:`megaphi.common.cli.entry_point`), as it does an ``OSError`` the system raised about a named
path; any other exception is a bug and keeps its traceback. So raise a :class:`UserError` (or a
subclass) exactly where the code knows the cause is the user's input, with a message that names what
is wrong and what to do.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; the message names what is wrong and what to do.

    A ``ValueError`` so that library callers that catch bad values keep working.
    """


class InputNotFoundError(UserError, FileNotFoundError):
    """A path the user named does not exist or matches nothing."""


class OutputExistsError(UserError, FileExistsError):
    """An output the user named already exists and would be overwritten or mixed with."""
