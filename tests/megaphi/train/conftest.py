"""Shared fixtures for trainer tests: a small learnable token corpus and a way to launch the trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megaphi.data import IndexedDatasetWriter

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> str:
    """300 documents of arithmetic progressions mod 512 (learnable, so losses move), as a .bin/.idx prefix."""
    prefix = str(tmp_path_factory.mktemp("corpus") / "progressions")
    rng = np.random.RandomState(0)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for _ in range(300):
            start, stride, length = rng.randint(0, 512), rng.randint(1, 8), rng.randint(16, 120)
            writer.add_document((start + stride * np.arange(length)) % 512)
    return prefix


def trainer_command(nproc: int, module: str = "megaphi.train") -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", module]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module]


def trainer_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.setdefault("DS_ACCELERATOR", "cpu")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def run_trainer(
    args: list[str], nproc: int = 1, timeout: float = 300, module: str = "megaphi.train"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        trainer_command(nproc, module) + args,
        cwd=REPO,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
