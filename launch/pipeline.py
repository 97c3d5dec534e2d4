"""Stages that rerun only when they must: the quickstart's runner and its manifests (its report: quickstart_report.py).

A stage is a list of commands with the paths it reads (inputs) and writes (outputs). When a stage
finishes, ``<work>/stages/<name>.json`` records a key (a hash of its commands, which hold every
parameter, and of the contents of its inputs), a fingerprint of its outputs, the time it took and
what it counted. The manifest is written last, atomically: a stage that was interrupted has none
and runs again. On a rerun a stage is skipped when its manifest's key equals the new key and its
outputs are still those it wrote; otherwise its outputs are removed and it runs again, and since
its outputs are the inputs of the stages after it, they run again too.

Inputs are fingerprinted by content (sha256) up to ``HASH_LIMIT`` bytes a file and by size and
modification time above it, so that a touched but unchanged small file costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text

HASH_LIMIT = 8 << 20
MANIFEST_VERSION = 1


def fingerprint(paths: list[Path], root: Path) -> dict[str, str]:
    """path (relative to ``root`` where possible) -> content hash, or size+mtime for big files; every
    file under a directory counts. A missing path is recorded as missing."""
    result: dict[str, str] = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if not path.exists():
            result[_name(path, root)] = "missing"
            continue
        for file in files:
            stat = file.stat()
            if stat.st_size <= HASH_LIMIT:
                digest = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
            else:
                digest = f"size:{stat.st_size},mtime:{stat.st_mtime_ns}"
            result[_name(file, root)] = digest
    return result


def _name(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def write_json_atomically(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


@dataclass
class Stage:
    """One step of the recipe. ``commands`` and ``inputs`` are built when the stage's turn comes, since
    they name what earlier stages wrote (shards, the latest checkpoint)."""

    name: str
    title: str
    commands: Callable[[], list[list[str]]]
    inputs: Callable[[], list[Path]]
    outputs: list[Path]
    counts: Callable[[], dict[str, Any]] = lambda: {}
    # Runs around the commands (a server the commands talk to): a context manager factory.
    around: Callable[[], Any] | None = None
    # Command arguments that are no parameter of the result (a free port): left out of the key.
    unkeyed: Callable[[], list[str]] = lambda: []


@dataclass
class Outcome:
    """What happened to a stage in this run, for the report."""

    stage: Stage
    status: str  # "ran" or "skipped"
    reason: str
    seconds: float  # of the run that produced the outputs (this one, or the recorded one when skipped)
    commands: list[list[str]] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)  # the last lines each command printed


class Pipeline:
    def __init__(self, work: Path, root: Path, env: dict[str, str]):
        self.work, self.root, self.env = work, root, env
        self.manifests = work / "stages"
        self.started = time.monotonic()

    def manifest_path(self, stage: Stage) -> Path:
        return self.manifests / f"{stage.name}.json"

    def read_manifest(self, stage: Stage) -> dict | None:
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a damaged record is no record: the stage runs again
        return manifest if manifest.get("version") == MANIFEST_VERSION else None

    def key(self, commands: list[list[str]], inputs: list[Path], unkeyed: Sequence[str] = ()) -> str:
        keyed = [[a for a in command if a not in unkeyed] for command in commands]
        payload = json.dumps({"commands": keyed, "inputs": fingerprint(inputs, self.work)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def decide(self, stage: Stage, key: str, forced: str | None) -> str | None:
        """Why the stage must run, or None when its outputs are complete and current."""
        if forced:
            return forced
        manifest = self.read_manifest(stage)
        if manifest is None:
            return "no record of a finished run"
        if manifest["key"] != key:
            return "its inputs or parameters changed"
        if fingerprint(stage.outputs, self.work) != manifest["outputs"]:
            return "its outputs changed or went missing since it ran"
        return None

    def run(self, stage: Stage, number: int, *, forced: str | None = None, keep: bool = False) -> Outcome:
        """Run or skip one stage. ``keep``: a stage before --start-at, taken as it is (it must be complete)."""
        elapsed = time.monotonic() - self.started
        print(f"\n=== {number}. {stage.name}: {stage.title}  [{elapsed:.0f}s]", flush=True)
        commands, inputs = stage.commands(), stage.inputs()
        key = self.key(commands, inputs, stage.unkeyed())
        manifest = self.read_manifest(stage)
        if keep:
            if manifest is None or fingerprint(stage.outputs, self.work) != manifest["outputs"]:
                raise UserError(
                    f"stage {stage.name} has no complete outputs to start after; "
                    f"rerun from it (--start-at {stage.name}) or without --start-at"
                )
            print("skipped: before --start-at, its outputs are taken as they are", flush=True)
            return self._skipped(stage, manifest, "before --start-at", commands, inputs)
        reason = self.decide(stage, key, forced)
        if reason is None:
            assert manifest is not None  # decide found the record current
            print(
                "skipped: outputs complete, inputs and parameters unchanged "
                f"(recorded {manifest['finished_at']}, took {manifest['seconds']:.0f}s)",
                flush=True,
            )
            return self._skipped(stage, manifest, "up to date", commands, inputs)
        print(f"running: {reason}", flush=True)
        self.manifest_path(stage).unlink(missing_ok=True)
        remove(stage.outputs)
        start = time.monotonic()
        said: list[str] = []
        context = stage.around() if stage.around else None
        if context is not None:
            context.__enter__()
        try:
            for command in commands:
                said.append(self._run_command(stage, command))
        finally:
            if context is not None:
                context.__exit__(None, None, None)
        seconds = time.monotonic() - start
        counts = stage.counts()
        self.manifests.mkdir(parents=True, exist_ok=True)
        write_json_atomically(
            self.manifest_path(stage),
            {
                "version": MANIFEST_VERSION,
                "name": stage.name,
                "key": key,
                "commands": commands,
                "inputs": [_name(p, self.work) for p in inputs],
                "outputs": fingerprint(stage.outputs, self.work),
                "seconds": round(seconds, 1),
                "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                "counts": counts,
                "said": said,
            },
        )
        return Outcome(stage, "ran", reason, seconds, commands, [_name(p, self.work) for p in inputs], counts, said)

    def _skipped(
        self, stage: Stage, manifest: dict, reason: str, commands: list[list[str]], inputs: list[Path]
    ) -> Outcome:
        return Outcome(
            stage,
            "skipped",
            reason,
            manifest["seconds"],
            commands,
            [_name(p, self.work) for p in inputs],
            manifest.get("counts", {}),
            manifest.get("said", []),
        )

    def _run_command(self, stage: Stage, command: list[str]) -> str:
        """Run one command, its output shown as it comes; returns its last line of output."""
        print("$ " + " ".join(shlex.quote(a) for a in command), flush=True)
        proc = subprocess.Popen(
            command,
            cwd=self.root,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        last = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.strip() and not line.startswith("["):  # progress lines are not what a stage says
                last = line.strip()
        if proc.wait() != 0:
            raise SystemExit(
                f"quickstart: stage {stage.name} failed (exit {proc.returncode}): "
                f"{' '.join(shlex.quote(a) for a in command)}"
            )
        return last
