"""What several benchmarks need: CPU time including worker processes, and loading a module's earlier version.

The benchmarks compare a stage with the version it replaced; that version is loaded from a file (or from
a commit through ``git show``) under its own module name, beside the current one.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (worker processes, datatrove's forked tasks)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load_module(path: str | os.PathLike, name: str) -> ModuleType:
    """Import the Python file ``path`` as module ``name`` (registered, since dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: {path} is not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def module_at_commit(commit: str, relpath: str, workdir: Path) -> ModuleType:
    """The module at ``relpath`` as it was at ``commit``, imported as ``before_<stem>``."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:{relpath}"], check=True, capture_output=True, text=True
    ).stdout
    path = workdir / f"before_{Path(relpath).stem}.py"
    path.write_text(source)
    return load_module(path, path.stem)
