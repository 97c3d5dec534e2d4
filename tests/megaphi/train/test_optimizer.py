"""Optimizer choice: apex's FusedAdam only on a GPU with apex importable, torch's AdamW otherwise."""

import pytest
import torch

from megaphi.train.config import OptimSection
from megaphi.train import optimizer as opt


def test_auto_takes_apex_on_gpu_when_importable(monkeypatch):
    monkeypatch.setattr(opt, "apex_optimizers_available", lambda: True)
    assert opt.resolve_optimizer("auto", on_gpu=True) == "apex"
    assert opt.resolve_optimizer("auto", on_gpu=False) == "torch"
    assert opt.resolve_optimizer("torch", on_gpu=True) == "torch"
    monkeypatch.setattr(opt, "apex_optimizers_available", lambda: False)
    assert opt.resolve_optimizer("auto", on_gpu=True) == "torch"


def test_explicit_apex_that_cannot_run_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(opt, "apex_optimizers_available", lambda: False)
    with pytest.raises(ValueError, match="optim.backend=apex needs NVIDIA apex"):
        opt.resolve_optimizer("apex", on_gpu=True)
    monkeypatch.setattr(opt, "apex_optimizers_available", lambda: True)
    with pytest.raises(ValueError, match="runs on CUDA only"):
        opt.resolve_optimizer("apex", on_gpu=False)


def test_on_cpu_the_optimizer_is_torch_adamw_with_decay_on_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer, name = opt.build_optimizer(model, OptimSection(lr=2e-3, weight_decay=0.1, beta2=0.98), on_gpu=False)
    assert isinstance(optimizer, torch.optim.AdamW) and name == "torch AdamW"
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 3]
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["lr"] == 2e-3
