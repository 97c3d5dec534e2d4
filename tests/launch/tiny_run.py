"""The smallest real training run a launcher test can start, and the checks that it really trained."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from megaphi.common.checkpoints import read_latest
from megaphi.data.indexed import IndexedDatasetWriter
from tests.conftest import read_jsonl

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "configs" / "phi_tiny_cpu.yaml"


def tiny_run_overrides(tmp_path: Path, steps: int = 2, global_batch_size: int = 4) -> list[str]:
    """Dotted overrides for the phi-tiny CPU recipe: a random-token dataset, 32-token windows, ``steps`` steps."""
    prefix = tmp_path / "data" / "tokens"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for _ in range(64):
            writer.add_document(rng.integers(0, 2000, size=int(rng.integers(20, 80))))
    return [
        f"run_dir={tmp_path / 'run'}",
        f"data.paths=[{prefix}]",
        "data.tokenizer=null",
        "data.seq_len=32",
        f"train.steps={steps}",
        "optim.warmup_steps=1",
        f"train.global_batch_size={global_batch_size}",
        "train.micro_batch_size=1",
        "train.gradient_accumulation_steps=null",
        "train.tensor_parallel_size=1",
        f"checkpoint.interval={steps}",
        "checkpoint.init_from=null",
        "logging.interval=1",
        "logging.tensorboard=false",
        "logging.plot=false",
        "eval.interval=0",
    ]


def assert_trained(run_dir: Path, steps: int, data_parallel_size: int, global_batch_size: int = 4) -> None:
    """metrics.jsonl has one finite step per line and the last step's checkpoint is a loadable model."""
    lines = read_jsonl(run_dir / "metrics.jsonl")
    train_lines = [m for m in lines if "loss" in m and "step" in m]
    assert [m["step"] for m in train_lines] == list(range(1, steps + 1))
    assert all(math.isfinite(m["loss"]) for m in train_lines)
    assert train_lines[-1]["consumed_samples"] == steps * global_batch_size
    root = run_dir / "checkpoints"
    tag = read_latest(root)
    assert (root / tag / "mp_rank_00_model_states.pt").is_file()
    # ZeRO-2 shards the optimizer state over the data-parallel ranks: one file per rank.
    assert len(list((root / tag).glob("*zero_pp_rank_*_optim_states.pt"))) == data_parallel_size
    from megaphi.convert.checkpoint import load_model_checkpoint

    config, shards, _ = load_model_checkpoint(root)
    assert config.hidden_size == 128 and len(shards) == 1
