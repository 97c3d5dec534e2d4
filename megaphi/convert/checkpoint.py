"""Reading and writing megaphi model checkpoints.

A model checkpoint is a directory with ``megaphi.json`` and one ``mp_rank_{r:02d}_model_states.pt`` per
tensor-parallel rank holding ``{"module": state_dict}``: DeepSpeed's own file naming, so a DeepSpeed
checkpoint tag directory becomes a model checkpoint once ``megaphi.json`` is written into it. A run's
checkpoint root holds DeepSpeed's ``latest`` file naming the newest tag.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from megaphi.common.checkpoints import META_FILE, CheckpointError, resolve_checkpoint_dir
from megaphi.common.files import atomic_write_text
from megaphi.convert.layout import StateDict, check_shards
from megaphi.model import PhiConfig

TOKENIZER_DIR = "tokenizer"


def rank_file(rank: int) -> str:
    return f"mp_rank_{rank:02d}_model_states.pt"


def _read_meta(ckpt_dir: Path) -> dict[str, Any]:
    meta_path = ckpt_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e}): rewrite or restore it") from e
    if meta.get("format") != "megaphi":
        raise CheckpointError(f"{meta_path}: field 'format' must be \"megaphi\", got {meta.get('format')!r}")
    for field, kind in (("model", dict), ("tensor_parallel_size", int)):
        if not isinstance(meta.get(field), kind):
            raise CheckpointError(f"{meta_path}: field '{field}' must be a {kind.__name__}, got {meta.get(field)!r}")
    return meta


def _resolve_tokenizer(ckpt_dir: Path, named: str | None) -> str | None:
    if (ckpt_dir / TOKENIZER_DIR).is_dir():
        return str(ckpt_dir / TOKENIZER_DIR)
    if named is None:
        return None
    path = Path(named) if Path(named).is_absolute() else ckpt_dir / named
    if not path.is_dir():
        raise CheckpointError(
            f"{ckpt_dir / META_FILE}: field 'tokenizer' names {named}, which is not a directory: fix the path or "
            f"set it to null"
        )
    return str(path)


def load_checkpoint_config(path: str | Path) -> tuple[PhiConfig, dict[str, Any]]:
    """The model config and ``megaphi.json`` of a checkpoint (tag directory, or a root with ``latest``),
    without reading any weights; the metadata gains ``path`` (the tag directory) and ``tokenizer_path``
    (a directory or None)."""
    ckpt_dir = resolve_checkpoint_dir(path)
    meta = _read_meta(ckpt_dir)
    try:
        config = PhiConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_dir / META_FILE}: field 'model' is not a valid PhiConfig: {e}") from e
    return config, dict(meta, path=str(ckpt_dir), tokenizer_path=_resolve_tokenizer(ckpt_dir, meta.get("tokenizer")))


def load_model_checkpoint(path: str | Path) -> tuple[PhiConfig, list[StateDict], dict[str, Any]]:
    """Load a megaphi checkpoint (tag directory, or a root with ``latest``).

    Returns the config, one state dict per tensor-parallel rank, and the metadata of ``megaphi.json``
    with two resolved entries added: ``path`` (the tag directory) and ``tokenizer_path`` (a directory
    or None). Every rank's keys and shapes are checked against the config.
    """
    config, meta = load_checkpoint_config(path)
    ckpt_dir = Path(meta["path"])
    tp = meta["tensor_parallel_size"]
    shards = []
    for rank in range(tp):
        file = ckpt_dir / rank_file(rank)
        if not file.is_file():
            raise CheckpointError(
                f"{file} is missing: {META_FILE} says tensor_parallel_size {tp}, so ranks 0..{tp - 1} must exist"
            )
        # DeepSpeed writes more than tensors into these files (its config, versions, shapes), so
        # weights_only loading would reject real training checkpoints; checkpoints are the user's own files.
        try:
            states = torch.load(file, map_location="cpu", weights_only=False, mmap=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise CheckpointError(
                f"{file} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                "the file is truncated or corrupt; restore it or use another checkpoint"
            ) from None
        if not isinstance(states, dict) or not isinstance(states.get("module"), dict):
            raise CheckpointError(f"{file} has no 'module' state dict: it is not a model states file")
        shards.append(dict(states["module"]))
    check_shards(shards, config, str(ckpt_dir))
    return config, shards, meta


def prepare_output_dir(path: str | Path) -> Path:
    """Create ``path``; refuse to write into a non-empty directory (never mix two checkpoints)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"output {path} already exists and is not empty: pass a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_meta(ckpt_dir: str | Path, config: PhiConfig, tensor_parallel_size: int, tokenizer: str | None) -> None:
    meta = {
        "format": "megaphi",
        "model": config.to_dict(),
        "tensor_parallel_size": tensor_parallel_size,
        "tokenizer": tokenizer,
    }
    atomic_write_text(Path(ckpt_dir) / META_FILE, json.dumps(meta, indent=2) + "\n")


def save_model_checkpoint(
    path: str | Path,
    config: PhiConfig,
    rank_state_dicts: list[StateDict],
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a megaphi checkpoint into a new (or empty) directory; copies ``tokenizer_dir`` to ``tokenizer/``."""
    check_shards(rank_state_dicts, config, "state dicts to save")
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise CheckpointError(f"tokenizer directory {tokenizer_dir} does not exist: pass a tokenizer directory")
    out = prepare_output_dir(path)
    for rank, state_dict in enumerate(rank_state_dicts):
        torch.save({"module": state_dict}, out / rank_file(rank))
    tokenizer = None
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, out / TOKENIZER_DIR)
        tokenizer = TOKENIZER_DIR
    write_meta(out, config, len(rank_state_dicts), tokenizer)
    return out
