"""Checkpoint conversion: Hugging Face / legacy phi-1 <-> megaphi, and tensor-parallel resharding."""

from megaphi.convert.checkpoint import (
    load_model_checkpoint,
    resolve_checkpoint_dir,
    save_model_checkpoint,
    write_meta,
)
from megaphi.convert.conversions import convert_from_hf, convert_to_hf, reshard_checkpoint
from megaphi.convert.hf import (
    config_from_hf,
    load_hf_checkpoint,
    megaphi_to_hf_state_dict,
    save_hf_checkpoint,
    source_to_megaphi,
)
from megaphi.convert.layout import (
    CheckpointError,
    check_divisible,
    config_padded_vocab_size,
    merge_state_dicts,
    param_specs,
    split_state_dict,
)

__all__ = [
    "CheckpointError",
    "check_divisible",
    "config_from_hf",
    "convert_from_hf",
    "convert_to_hf",
    "load_hf_checkpoint",
    "load_model_checkpoint",
    "megaphi_to_hf_state_dict",
    "merge_state_dicts",
    "config_padded_vocab_size",
    "param_specs",
    "reshard_checkpoint",
    "resolve_checkpoint_dir",
    "save_hf_checkpoint",
    "save_model_checkpoint",
    "source_to_megaphi",
    "split_state_dict",
    "write_meta",
]
