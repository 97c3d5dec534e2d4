"""Training checkpoints that survive SIGKILL at any moment.

A checkpoint root (``checkpoint.dir``) looks like::

    latest                          tag of the newest *complete* checkpoint
    step200/                        a DeepSpeed tag directory, and a megaphi model checkpoint:
      megaphi.json                  (contract: format, model config, tensor_parallel_size, tokenizer)
      mp_rank_00_model_states.pt    {"module": weights, DeepSpeed's fields, our client state}
      *zero_pp_rank_*_optim_states.pt
      tokenizer/                    copied from data.tokenizer when set

Order of writing: every rank's DeepSpeed files, a barrier, ``megaphi.json``, then ``latest`` replaced
atomically (write a temporary file, fsync, rename). A kill before the rename leaves ``latest`` on
the previous complete checkpoint, and the half-written tag is removed on the next save.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from megaphi import parallel
from megaphi.common.checkpoints import LATEST_FILE, read_latest, write_latest
from megaphi.convert.checkpoint import TOKENIZER_DIR, write_meta
from megaphi.convert.layout import CheckpointError
from megaphi.model import PhiConfig
from megaphi.train.deepspeed_compat import load_zero_optimizer_states

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

_TAG = re.compile(r"^step(\d+)$")


def tag_for(step: int) -> str:
    return f"step{step}"


def capture_rng_state() -> dict[str, Any]:
    """Every random stream that training draws from on this rank."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tensor_parallel_tracker": parallel.get_rng_tracker().get_states(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    parallel.get_rng_tracker().set_states(state["tensor_parallel_tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tags_by_step(root: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _TAG.match(p.name))]
    return sorted(found)


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete tags newer than ``latest`` (left by a kill mid-save) and all but the newest ``keep_last``."""
    root = Path(root)
    latest = read_latest(root)
    tags = _tags_by_step(root)
    latest_step = next((s for s, p in tags if p.name == latest), None)
    removed = []
    complete = []
    for step, path in tags:
        if latest_step is None or step > latest_step:
            removed.append(path)
        else:
            complete.append(path)
    if keep_last > 0:
        removed += complete[:-keep_last]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def save_checkpoint(
    engine: DeepSpeedEngine,
    root: str | Path,
    step: int,
    client_state: dict[str, Any],
    model_config: PhiConfig,
    tokenizer_dir: str | None,
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. Returns the tag directory, complete once this returns."""
    root = Path(root)
    tag = tag_for(step)
    rank = dist.get_rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if (root / tag).exists() and read_latest(root) != tag:
            shutil.rmtree(root / tag)  # a half-written save of this step from a killed run
    dist.barrier()
    state = dict(client_state, rng=capture_rng_state())
    engine.save_checkpoint(str(root), tag=tag, client_state=state, save_latest=False)
    dist.barrier()
    if rank == 0:
        tokenizer = None
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, root / tag / TOKENIZER_DIR, dirs_exist_ok=True)
            tokenizer = TOKENIZER_DIR
        write_meta(root / tag, model_config, parallel.get_tensor_parallel_world_size(), tokenizer)
        write_latest(root, tag)
        prune(root, keep_last)
    dist.barrier()
    return root / tag


def load_checkpoint(engine: DeepSpeedEngine, root: str | Path) -> dict[str, Any] | None:
    """Restore engine, optimizer and RNG state from ``latest``; returns the client state, or None if none.

    The data-parallel size may differ from the saving run's. DeepSpeed's ``load_checkpoint`` loads
    the module and its counters; the ZeRO optimizer partitions are loaded here, regrouped for the
    current size (see ``deepspeed_compat.load_zero_optimizer_states``).
    """
    root = Path(root)
    tag = read_latest(root) if root.is_dir() else None
    if tag is None:
        return None
    if not (root / tag).is_dir():
        raise CheckpointError(
            f"{root / LATEST_FILE} names {tag}, which does not exist; restore it or point latest at an existing tag"
        )
    path, client_state = engine.load_checkpoint(
        str(root), tag=tag, load_optimizer_states=False, load_lr_scheduler_states=False, load_module_strict=True
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {root / tag}; see its log above")
    load_zero_optimizer_states(
        engine, str(root), tag, where=f"tensor-parallel rank {parallel.get_tensor_parallel_rank()}"
    )
    restore_rng_state(client_state["rng"])
    return client_state
