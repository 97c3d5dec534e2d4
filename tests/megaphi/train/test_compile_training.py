"""A compiled training run (train.compile) resumes from its checkpoint exactly, dropout included."""

from __future__ import annotations

import shutil

import pytest

from megaphi.train import checkpoint as ckpt
from megaphi.train.metrics import read_metrics
from tests.megaphi.train.conftest import REPO, run_trainer

pytestmark = pytest.mark.slow


def train(corpus, run_dir, *overrides):
    result = run_trainer(
        [
            "--config",
            str(REPO / "configs" / "phi_tiny_cpu.yaml"),
            f"run_dir={run_dir}",
            "model.preset=phi-tiny",
            f"data.paths=[{corpus}]",
            "data.split=100,0,0",
            "data.seq_len=32",
            "train.steps=4",
            "train.global_batch_size=4",
            "train.micro_batch_size=2",
            "train.precision=fp32",
            f"train.deepspeed_config={REPO / 'ds_configs' / 'cpu.json'}",
            "train.compile=blocks",
            "model.overrides.resid_pdrop=0.1",
            "model.overrides.attention_dropout=0.1",
            "checkpoint.interval=2",
            "checkpoint.keep_last=0",
            "logging.interval=1",
            "logging.tensorboard=false",
            "logging.plot=false",
            "eval.interval=0",
            "optim.warmup_steps=1",
            *overrides,
        ]
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def test_compiled_run_resumed_from_a_middle_checkpoint_reproduces_every_loss(tmp_path, tiny_corpus):
    straight = tmp_path / "straight"
    train(tiny_corpus, straight)
    # A run killed after step 3: the step-2 checkpoint is its latest; the step-4 one never completed.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    (resumed / "checkpoints" / ckpt.LATEST_FILE).write_text(ckpt.tag_for(2))
    result = train(tiny_corpus, resumed, "--resume", "auto")
    assert "resuming at step 2" in result.stdout
    assert "kernels: attention" in result.stdout and "compile blocks" in result.stdout
    ours, ref = read_metrics(resumed / "metrics.jsonl"), read_metrics(straight / "metrics.jsonl")
    assert [r["step"] for r in ours] == [1, 2, 3, 4]
    assert [r["loss"] for r in ours] == [r["loss"] for r in ref]
