"""Start-up checks: each done once, on global rank 0, and the result shared with every rank.

:func:`preflight` runs :func:`check` on rank 0 and broadcasts what it found (a :class:`StartPlan`,
or the error every rank then raises), so a bad recipe fails with one line before any file is
written, and a 1000-rank job does not read its datasets 1000 times. The token-id check reads each
dataset's token-stats sidecar (``{prefix}.stats.json``, written with the ``.bin/.idx``), not its
tokens, so start-up takes as long for 6 billion tokens as for 6 thousand. A dataset without one
(written by another tool) is scanned once, with a notice naming the command that writes it.

Finally rank 0 locks the run directory (:mod:`megaphi.train.run_lock`) for the life of the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

from megaphi.common.errors import UserError
from megaphi.config import ConfigError
from megaphi.convert.checkpoint import load_checkpoint_config
from megaphi.convert.layout import CheckpointError
from megaphi.data.builder import parse_data_paths
from megaphi.data.gpt_dataset import DatasetConfigError
from megaphi.data.indexed import IndexedDataset, IndexedDatasetError, MissingTokenStats, bin_path, idx_path
from megaphi.model import PhiConfig
from megaphi.train import checkpoint as ckpt
from megaphi.train.config import BatchPlan, TrainConfig, plan_batches
from megaphi.train.engine import deepspeed_config, resolve_model_config
from megaphi.train.run_lock import RunDirLocked, RunLock

# What a resumed run may change about its model: nothing that shapes a parameter.
RESUMABLE_MODEL_CHANGES = {
    "resid_pdrop",
    "embd_pdrop",
    "attention_dropout",
    "attn_backend",
    "activation_checkpointing",
    "cross_entropy",
    "layer_norm_backend",
}


class PreflightError(ConfigError):
    """A start-up check failed. Every rank raises the same one; global rank 0 reports it."""


@dataclass(frozen=True)
class StartPlan:
    """What the checks established, the same on every rank."""

    plan: BatchPlan
    ds_config: dict[str, Any]
    data_paths: list[tuple[float | None, str]]  # parsed data.paths
    model_config: PhiConfig  # preset, or the resumed / init_from checkpoint's, with model.overrides applied
    resume_tag: str | None  # the checkpoint to continue from
    tokenizer: str | None  # copied into every checkpoint


def preflight(cfg: TrainConfig, world_size: int, resume: bool) -> tuple[StartPlan, list[RunLock]]:
    """Collective: rank 0 checks and locks, every rank gets the plan (or raises PreflightError).

    Returns the run-directory locks, held by rank 0 only (empty elsewhere); release them at the end.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    payload: StartPlan | str | None = None
    locks: list[RunLock] = []
    if rank == 0:
        try:
            payload = check(cfg, world_size, resume)
            locks = lock_run_dirs(cfg)
        except UserError as e:  # a ConfigError, or any other error the user can fix: the same verdict for all
            payload = str(e)
        except BaseException:
            if world_size > 1:  # let the other ranks stop too; this rank shows the traceback
                dist.broadcast_object_list(["rank 0 failed during start-up checks; see its traceback"], src=0)
            raise
    if world_size > 1:
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if not isinstance(payload, StartPlan):
        raise PreflightError(payload or "rank 0 sent no start-up plan")
    return payload, locks


def check(cfg: TrainConfig, world_size: int, resume: bool, say: Callable[[str], None] = print) -> StartPlan:
    """Every start-up check, without a process group; raises ConfigError naming the field to fix."""
    data_paths, datasets = _data_paths(cfg)
    root = cfg.checkpoint_dir
    latest = ckpt.read_latest(root) if root.is_dir() else None
    if latest is not None and not resume:
        raise ConfigError(
            f"checkpoint.dir: {root} already holds checkpoints (latest: {latest}); pass "
            "--resume auto to continue that run, or choose another run_dir"
        )
    if cfg.checkpoint.init_from is not None and not Path(cfg.checkpoint.init_from).is_dir():
        raise ConfigError(
            f"checkpoint.init_from: {cfg.checkpoint.init_from!r} is not a directory; give a megaphi "
            "checkpoint (a tag directory, or a checkpoint root with a 'latest' file)"
        )
    tp = cfg.train.tensor_parallel_size
    if world_size % tp:
        raise ConfigError(
            f"train.tensor_parallel_size: {tp} does not divide the {world_size} processes of this "
            "job; launch a multiple of it or change it"
        )
    plan = plan_batches(cfg.train, world_size // tp)
    ds_config = deepspeed_config(cfg, plan)
    _check_precision(cfg.train.precision)
    model_config, tokenizer = _model_config(cfg, root if latest is not None else None)
    _check_token_ids(datasets, model_config.vocab_size, say)
    if cfg.data.seq_len > model_config.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len: {cfg.data.seq_len} exceeds the model's max_position_embeddings "
            f"{model_config.max_position_embeddings}"
        )
    # a finetuned or resumed model keeps the tokenizer it was trained with, unless data.tokenizer names one
    return StartPlan(plan, ds_config, data_paths, model_config, latest, cfg.data.tokenizer or tokenizer)


def lock_run_dirs(cfg: TrainConfig) -> list[RunLock]:
    """Lock the run directory, and the checkpoint directory when it lies elsewhere."""
    dirs = [Path(cfg.run_dir)]
    if not cfg.checkpoint_dir.resolve().is_relative_to(dirs[0].resolve()):
        dirs.append(cfg.checkpoint_dir)
    locks: list[RunLock] = []
    try:
        for directory in dirs:
            locks.append(RunLock(directory).acquire())
            if locks[-1].previous is not None:
                print(
                    f"megaphi.train: taking over the lock of {directory}: its holder, "
                    f"{locks[-1].previous.describe()}, is gone",
                    flush=True,
                )
    except RunDirLocked as e:
        for lock in locks:
            lock.release()
        raise ConfigError(f"run_dir: {e}") from None
    return locks


def _data_paths(cfg: TrainConfig) -> tuple[list[tuple[float | None, str]], list[IndexedDataset]]:
    """data.paths parsed, and each prefix opened: an indexed dataset whose index is intact; and
    data.tokenizer a directory."""
    if not cfg.data.paths:
        raise ConfigError(
            "data.paths: give at least one dataset prefix (the path of a .bin/.idx pair without the extension)"
        )
    try:
        parsed = parse_data_paths(cfg.data.paths)
    except DatasetConfigError as e:
        raise ConfigError(f"data.paths: {e}") from None
    datasets = []
    for _, prefix in parsed:
        missing = [path for path in (bin_path(prefix), idx_path(prefix)) if not Path(path).is_file()]
        if missing:
            raise ConfigError(
                f"data.paths: no indexed dataset at {prefix!r} ({' and '.join(missing)} not found); "
                "build it with python -m data_tools.preprocess or fix the prefix"
            )
        try:
            datasets.append(IndexedDataset(prefix))  # reads and checks the index header and sizes, not the tokens
        except IndexedDatasetError as e:
            raise ConfigError(f"data.paths: {e}") from None
    if cfg.data.tokenizer is not None and not Path(cfg.data.tokenizer).is_dir():
        raise ConfigError(
            f"data.tokenizer: {cfg.data.tokenizer!r} is not a directory; give a tokenizer directory or null"
        )
    return parsed, datasets


def _check_precision(precision: str) -> None:
    if precision == "fp32":
        return
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    supported = {"fp16": accelerator.is_fp16_supported, "bf16": accelerator.is_bf16_supported}
    if not supported[precision]():
        raise ConfigError(
            f"train.precision: DeepSpeed does not support {precision} on this "
            f"{accelerator.device_name()} device; use " + ("bf16 or fp32" if precision == "fp16" else "fp16 or fp32")
        )


def _model_config(cfg: TrainConfig, resume_root: Path | None) -> tuple[PhiConfig, str | None]:
    """The architecture to build and the tokenizer its checkpoint carries.

    Resuming: the run's own checkpoint says what the model is. ``checkpoint.init_from``: that
    checkpoint's config. Otherwise ``model.preset``. ``model.overrides`` apply in every case; a
    resumed run may only change what shapes no parameter.
    """
    base, tokenizer = None, None
    source = resume_root if resume_root is not None else cfg.checkpoint.init_from
    if source is not None:
        try:
            base, meta = load_checkpoint_config(source)
        except CheckpointError as e:
            field = "checkpoint.dir: cannot resume" if resume_root is not None else "checkpoint.init_from"
            raise ConfigError(f"{field}: {e}") from None
        tokenizer = meta["tokenizer_path"]
    model_config = resolve_model_config(cfg, base)
    if resume_root is not None and base is not None:
        ours, theirs = model_config.to_dict(), base.to_dict()
        for field, value in ours.items():
            if field not in RESUMABLE_MODEL_CHANGES and value != theirs.get(field):
                raise ConfigError(
                    f"model.overrides.{field}: {value!r} differs from the checkpoint being resumed "
                    f"({theirs.get(field)!r}); a resumed run keeps its architecture (start a new "
                    "run_dir, with checkpoint.init_from to start from these weights)"
                )
    return model_config, tokenizer


def _check_token_ids(datasets: list[IndexedDataset], vocab_size: int, say: Callable[[str], None]) -> None:
    """Every token id below the model's vocab_size: an id past the embedding table would crash a step
    (or, on some kernels, read garbage). Reads each dataset's sidecar; scans only a dataset without one."""
    for dataset in datasets:
        prefix = dataset.prefix
        try:
            stats = dataset.token_stats()
        except MissingTokenStats as why:
            say(
                f"megaphi.train: {prefix} has no token statistics ({why}); reading its {dataset.num_tokens:,} "
                f"tokens once to check their ids. `python -m data_tools.preprocess stats --input {prefix}` "
                "records them so that later starts skip this"
            )
            stats = dataset.scan_token_stats()
        try:
            dataset.check_vocab(vocab_size, stats)
        except IndexedDatasetError as e:
            raise ConfigError(f"data.paths: {e}") from None
