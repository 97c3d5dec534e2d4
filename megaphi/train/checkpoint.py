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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megaphi import parallel
from megaphi.common.checkpoints import LATEST_FILE, read_latest, write_latest
from megaphi.convert.checkpoint import TOKENIZER_DIR, write_meta
from megaphi.convert.layout import CheckpointError
from megaphi.model import PhiConfig

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


def save_checkpoint(engine, root: str | Path, step: int, client_state: dict[str, Any], model_config: PhiConfig,
                    tokenizer_dir: str | None, keep_last: int) -> Path:
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


def regroup_zero_partitions(saved: list[dict[str, Any]], new_size: int) -> list[dict[str, Any]]:
    """The ZeRO-1/2 optimizer states of the saving run's data-parallel ranks, regrouped for ``new_size`` ranks.

    In DeepSpeed's elastic checkpoint format each rank stores its slice of every flat parameter
    group (fp32 master weights and Adam moments) without padding, and the optimizer's loader
    concatenates the slices of all entries and re-splits them for the current data-parallel size,
    but it reads the entry at the current rank's index for scalar state, so it cannot grow the
    number of ranks. Merging all slices into the first entry and adding empty entries for the other
    ranks gives it one entry per rank, with the same concatenation.
    """
    from deepspeed.checkpoint.constants import (BASE_OPTIMIZER_STATE, BASE_OPTIMIZER_STATE_STEP,
                                                SINGLE_PARTITION_OF_FP32_GROUPS as FP32)

    first = saved[0]
    if not isinstance(first[BASE_OPTIMIZER_STATE], list):
        raise CheckpointError("the checkpoint's ZeRO optimizer state is not elastic (zero_optimization."
                              "elastic_checkpoint was false when it was saved), so it cannot change data-parallel "
                              "size; resume on the same number of data-parallel ranks")
    merged_fp32 = [torch.cat([sd[FP32][g] for sd in saved]) for g in range(len(first[FP32]))]
    merged_state, empty_state = [], []
    for g, group_state in enumerate(first[BASE_OPTIMIZER_STATE]):
        merged, empty = {}, {}
        for key, value in group_state.items():
            parts = [sd[BASE_OPTIMIZER_STATE][g][key] for sd in saved]
            sliced = all(torch.is_tensor(p) and p.shape == sd[FP32][g].shape for p, sd in zip(parts, saved))
            merged[key] = torch.cat(parts) if sliced else value
            empty[key] = value[:0] if sliced else value
        merged_state.append(merged)
        empty_state.append(empty)
    # The loader also wants a group-level step, which torch's AdamW keeps per parameter (in the state
    # merged above) instead; None is what the groups of a torch optimizer hold.
    step = first.get(BASE_OPTIMIZER_STATE_STEP)
    whole = dict(first, **{BASE_OPTIMIZER_STATE: merged_state, FP32: merged_fp32, BASE_OPTIMIZER_STATE_STEP: step})
    nothing = dict(whole, **{BASE_OPTIMIZER_STATE: empty_state, FP32: [t[:0] for t in merged_fp32]})
    return [whole] + [nothing] * (new_size - 1)


def load_checkpoint(engine, root: str | Path) -> dict[str, Any] | None:
    """Restore engine, optimizer and RNG state from ``latest``; returns the client state, or None if none.

    The data-parallel size may differ from the saving run's. DeepSpeed's ``load_checkpoint`` loads
    the module and its counters; the ZeRO optimizer partitions are loaded here, regrouped for the
    current size (see ``regroup_zero_partitions``): DeepSpeed's own path refuses a new data-parallel
    size for ZeRO stages 1 and 2, and cannot read its elastic format back for a torch optimizer.
    """
    root = Path(root)
    tag = read_latest(root) if root.is_dir() else None
    if tag is None:
        return None
    if not (root / tag).is_dir():
        raise CheckpointError(f"{root / LATEST_FILE} names {tag}, which does not exist; restore it or point "
                              "latest at an existing tag")
    path, client_state = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=False,
                                                load_lr_scheduler_states=False, load_module_strict=True)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {root / tag}; see its log above")
    saved = engine._get_all_zero_checkpoints(str(root), tag)
    if saved is None:
        raise CheckpointError(f"{root / tag} has no ZeRO optimizer states for tensor-parallel rank "
                              f"{parallel.get_tensor_parallel_rank()}; the checkpoint is incomplete")
    engine.optimizer.load_state_dict(state_dict_list=regroup_zero_partitions(saved, engine.dp_world_size),
                                     load_optimizer_states=True, load_from_fp32_weights=True,
                                     param_shapes=engine._get_zero_param_shapes())
    restore_rng_state(client_state["rng"])
    return client_state
