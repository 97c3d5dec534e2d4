"""Pipeline steps that let tests see and steer what each task of a stage does."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from megaphi.common.errors import InputNotFoundError


class RecordRuns(PipelineStep):
    """Passes documents on, then appends ``rank`` to ``journal``: one line each time a task got past it."""

    name = "record runs"

    def __init__(self, journal: str | os.PathLike):
        super().__init__()
        self.journal = os.fspath(journal)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        yield from data or ()
        with open(self.journal, "a") as journal:
            journal.write(f"{rank}\n")


class FailWhile(PipelineStep):
    """Task ``rank`` raises while the file ``flag`` exists: a bug (RuntimeError), or with ``user_error``
    a fault of the input (a UserError); either way a rerun after the fix gets past it."""

    name = "fail while flagged"

    def __init__(self, rank: int, flag: str | os.PathLike, *, user_error: bool = False):
        super().__init__()
        self.rank = rank
        self.flag = os.fspath(flag)
        self.user_error = user_error

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        if rank == self.rank and Path(self.flag).exists():
            if self.user_error:
                raise InputNotFoundError(f"{self.flag}: task {rank} found a bad input")
            raise RuntimeError(f"task {rank} was told to fail")
        yield from data or ()


class HangWhile(PipelineStep):
    """Task ``rank`` writes ``started`` and then waits as long as ``flag`` exists (a task to kill midway)."""

    name = "hang while flagged"

    def __init__(self, rank: int, flag: str | os.PathLike, started: str | os.PathLike):
        super().__init__()
        self.rank = rank
        self.flag = os.fspath(flag)
        self.started = os.fspath(started)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for document in data or ():
            yield document
        if rank == self.rank:
            Path(self.started).touch()
            while Path(self.flag).exists():
                time.sleep(0.1)


class KillSelfWhile(PipelineStep):
    """Task ``rank``'s process kills itself with SIGKILL while ``flag`` exists (what the OOM killer does)."""

    name = "kill itself while flagged"

    def __init__(self, rank: int, flag: str | os.PathLike):
        super().__init__()
        self.rank = rank
        self.flag = os.fspath(flag)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        if rank == self.rank and Path(self.flag).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        yield from data or ()
