"""Network helpers shared by launchers, the quickstart and the tests."""

from __future__ import annotations

import socket


def free_port(host: str = "") -> int:
    """A TCP port that is free right now on ``host`` (every interface by default).

    Another process may take it before it is used; callers that start a server on it retry or fail
    with a clear message.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
