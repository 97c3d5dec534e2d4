"""Where a checkpoint is: tag directories and the ``latest`` file of a checkpoint root.

A model checkpoint is a directory with ``megaphi.json`` (plus weights, see
:mod:`megaphi.convert.checkpoint`). A run's checkpoint root holds tag directories and DeepSpeed's
``latest`` file naming the newest complete one; every command that takes a checkpoint accepts
either. Torch-free, so launchers and the quickstart resolve checkpoints without loading torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text

META_FILE = "megaphi.json"
LATEST_FILE = "latest"


class CheckpointError(UserError):
    """A checkpoint that cannot be used as given; the message says why and what to do."""


def read_latest(root: str | os.PathLike) -> str | None:
    """The tag that ``root/latest`` names (stripped; empty when the file is), or None without one."""
    latest = Path(root) / LATEST_FILE
    return latest.read_text().strip() if latest.is_file() else None


def write_latest(root: str | os.PathLike, tag: str) -> None:
    """Point ``root/latest`` at ``tag`` atomically and durably: a kill leaves the old tag or the new."""
    atomic_write_text(Path(root) / LATEST_FILE, tag, durable=True)


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A tag directory as given, or the tag that a checkpoint root's ``latest`` file names."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory: pass a megaphi checkpoint directory")
    if (path / META_FILE).is_file():
        return path
    tag = read_latest(path)
    if tag is None:
        raise CheckpointError(
            f"{path} has neither {META_FILE} nor a '{LATEST_FILE}' file: pass a megaphi checkpoint directory "
            f"(convert a Hugging Face model with `python -m megaphi.convert from-hf`)"
        )
    latest = path / LATEST_FILE
    if not tag:
        raise CheckpointError(
            f"{latest} is empty: write the tag of a finished checkpoint into it, or pass a tag directory explicitly"
        )
    tag_dir = path / tag
    if not (tag_dir / META_FILE).is_file():
        raise CheckpointError(
            f"{latest} names tag '{tag}' but {tag_dir / META_FILE} does not exist: the run did not finish "
            f"writing that checkpoint; pass an older tag directory explicitly"
        )
    return tag_dir


def is_checkpoint_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a megaphi checkpoint: a tag directory or a root with ``latest``."""
    path = Path(path)
    return (path / META_FILE).is_file() or (path / LATEST_FILE).is_file()


def is_hf_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Hugging Face model directory (a ``config.json``, and no ``megaphi.json``)."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / META_FILE).is_file()


def check_model_path(path: str | os.PathLike) -> Path:
    """``path`` if it can be a model for inference (a megaphi checkpoint or a Hugging Face model
    directory), else an error that names both kinds, for every command that takes ``--model``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"model {path} is not a directory: pass a megaphi checkpoint (a tag directory, or a "
            f"checkpoint root with '{LATEST_FILE}') or a Hugging Face model directory"
        )
    if not (is_checkpoint_path(path) or is_hf_dir(path)):
        raise CheckpointError(
            f"{path} is neither a megaphi checkpoint (no {META_FILE} or '{LATEST_FILE}') nor a "
            "Hugging Face model directory (no config.json): pass one of those"
        )
    return path
