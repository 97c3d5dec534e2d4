"""The three conversions that ``python -m megaphi.convert`` offers, as library functions."""

from __future__ import annotations

from pathlib import Path

from megaphi.convert.checkpoint import load_model_checkpoint, save_model_checkpoint
from megaphi.convert.hf import has_tokenizer, load_hf_checkpoint, save_hf_checkpoint
from megaphi.convert.layout import check_divisible, merge_state_dicts, reshard, split_state_dict


def convert_from_hf(hf_dir: str | Path, out_dir: str | Path, tensor_parallel_size: int = 1) -> Path:
    """A Hugging Face Phi directory (transformers or legacy MixFormer layout) -> megaphi checkpoint, split for TP."""
    config, full = load_hf_checkpoint(hf_dir)
    check_divisible(config, tensor_parallel_size)  # before any file is written
    shards = split_state_dict(full, config, tensor_parallel_size)
    tokenizer = hf_dir if has_tokenizer(hf_dir) else None
    return save_model_checkpoint(out_dir, config, shards, tokenizer_dir=tokenizer)


def convert_to_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """A megaphi checkpoint (any TP size) -> a directory transformers loads as PhiForCausalLM."""
    config, shards, meta = load_model_checkpoint(checkpoint)
    full = merge_state_dicts(shards, config, meta["path"])
    return save_hf_checkpoint(out_dir, config, full, tokenizer_dir=meta["tokenizer_path"])


def reshard_checkpoint(checkpoint: str | Path, out_dir: str | Path, tensor_parallel_size: int) -> Path:
    """Rewrite a megaphi checkpoint for another tensor parallel size (exact: tensors are only moved)."""
    config, shards, meta = load_model_checkpoint(checkpoint)
    new_shards = reshard(shards, config, tensor_parallel_size, meta["path"])
    return save_model_checkpoint(out_dir, config, new_shards, tokenizer_dir=meta["tokenizer_path"])
