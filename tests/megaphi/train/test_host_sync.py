"""No host synchronisation inside a training step from megaphi's own code.

A device-to-host read (``.item()``, ``float(t)``, ``bool(t)``, ``if t:``) stalls the host until the
device has finished all queued work. All of these go through ``aten._local_scalar_dense``, which a
dispatch mode sees on the CPU as well, so the count made here is the count a GPU step would make.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import megaphi
from megaphi import parallel
from megaphi.parallel import get_rng_tracker
from megaphi.model import PhiConfig, PhiForCausalLM
from tests.distributed import spawn
from tests.megaphi.train.conftest import REPO

MEGAPHI_DIR = str(Path(megaphi.__file__).parent)


@pytest.fixture(autouse=True)
def _unseeded_rng_streams_afterwards():
    """seed_everything adds a model-parallel stream to the process-wide tracker; later tests expect none."""
    yield
    get_rng_tracker().reset()


class HostSyncs(TorchDispatchMode):
    """Records the Python stack of every tensor-to-host scalar read made while active."""

    def __init__(self) -> None:
        super().__init__()
        self.stacks: list[list[traceback.FrameSummary]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.stacks.append(traceback.extract_stack()[:-1])
        return func(*args, **(kwargs or {}))

    def from_megaphi(self) -> list[str]:
        """The syncs whose innermost non-torch frame is megaphi's code, as 'file:line' strings."""
        found = []
        for stack in self.stacks:
            ours = [f for f in stack if "/torch/" not in f.filename]
            if ours and ours[-1].filename.startswith(MEGAPHI_DIR):
                found.append(f"{ours[-1].filename}:{ours[-1].lineno}")
        return found


def test_forward_and_backward_with_fused_loss_dropout_and_checkpointing_never_sync():
    parallel.seed_everything(0)
    model = PhiForCausalLM(
        PhiConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            resid_pdrop=0.1,
            attention_dropout=0.1,
            embd_pdrop=0.1,
            activation_checkpointing=True,
        )
    )
    tokens = torch.randint(0, 300, (2, 17))
    labels = tokens[:, 1:].clone()
    labels[0, :4] = -100
    with HostSyncs() as syncs:
        model(tokens[:, :-1], labels=labels).backward()
    assert syncs.stacks == []
    with HostSyncs() as syncs:  # the probe itself sees a sync when there is one
        float(model(tokens[:, :-1], labels=labels).detach())
    assert len(syncs.stacks) == 1


def _engine_step_syncs(rank: int, world_size: int, precision: str, out: str) -> None:
    from megaphi.config import config_from_dict
    from megaphi.train.config import TrainConfig, plan_batches
    from megaphi.train.deepspeed_compat import loss_scale
    from megaphi.train.engine import build_engine, build_model, deepspeed_config, init_distributed, resolve_model_config

    init_distributed()
    parallel.initialize(1)
    template = {"fp32": "cpu.json", "bf16": "zero2_bf16.json"}[precision]
    cfg = config_from_dict(
        TrainConfig,
        {
            "model": {"preset": "phi-tiny", "overrides": {"resid_pdrop": 0.1, "attention_dropout": 0.1}},
            "data": {"seq_len": 32},
            "train": {
                "micro_batch_size": 2,
                "global_batch_size": 4,
                "precision": precision,
                "deepspeed_config": str(REPO / "ds_configs" / template),
            },
        },
    )
    engine = build_engine(
        cfg, build_model(resolve_model_config(cfg), 0), deepspeed_config(cfg, plan_batches(cfg.train, 1))
    )
    tokens = torch.randint(0, 2048, (2, 33))
    for _ in range(2):  # the second step runs on warm state (optimizer moments exist)
        with HostSyncs() as syncs:
            step_loss = torch.zeros(())
            for _ in range(2):  # what the trainer does per optimizer step, accumulation included
                loss = engine(tokens[:, :-1], labels=tokens[:, 1:])
                engine.backward(loss)
                engine.step()
                step_loss += loss.detach().float()
            engine.get_global_grad_norm(), loss_scale(engine), engine.skipped_steps
    Path(out).write_text("\n".join(syncs.from_megaphi()))
    parallel.destroy()


@pytest.mark.slow
def test_a_training_step_makes_no_host_sync_in_megaphi_code(tmp_path):
    """DeepSpeed's optimizer step still reads its overflow and grad-norm checks on the host; megaphi adds none."""
    out = tmp_path / "syncs.txt"
    spawn(_engine_step_syncs, 1, "bf16", str(out))
    assert out.read_text() == "", f"host syncs in megaphi at {out.read_text()}"
