"""Which loss implementation runs: liger-kernel's only where it can (CUDA, one TP rank), ours elsewhere."""

import pytest
import torch

from megaphi.model import loss
from megaphi.model.loss import resolve_cross_entropy
from tests.megaphi.tiny_phi import tiny_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def liger_importable(monkeypatch):
    monkeypatch.setattr(loss, "liger_available", lambda: True)


@pytest.fixture
def liger_missing(monkeypatch):
    monkeypatch.setattr(loss, "liger_available", lambda: False)


def at_tensor_parallel_size(monkeypatch, tp: int) -> None:
    monkeypatch.setattr(loss, "get_tensor_parallel_world_size", lambda: tp)


def test_auto_takes_liger_on_cuda_with_one_tensor_parallel_rank(liger_importable):
    assert resolve_cross_entropy("auto", CUDA) == "liger"


def test_auto_takes_the_chunked_fused_loss_on_cpu_without_liger_or_under_tensor_parallelism(monkeypatch):
    monkeypatch.setattr(loss, "liger_available", lambda: True)
    assert resolve_cross_entropy("auto", CPU) == "fused"
    at_tensor_parallel_size(monkeypatch, 2)
    assert resolve_cross_entropy("auto", CUDA) == "fused"
    monkeypatch.setattr(loss, "liger_available", lambda: False)
    at_tensor_parallel_size(monkeypatch, 1)
    assert resolve_cross_entropy("auto", CUDA) == "fused"


def test_explicit_choices_are_kept_or_refused_with_the_reason(monkeypatch, liger_missing):
    assert resolve_cross_entropy("fused", CUDA) == "fused"
    assert resolve_cross_entropy("unfused", CPU) == "unfused"
    with pytest.raises(ValueError, match="needs the liger-kernel package"):
        resolve_cross_entropy("liger", CUDA)
    monkeypatch.setattr(loss, "liger_available", lambda: True)
    with pytest.raises(ValueError, match="runs on CUDA only, not on cpu"):
        resolve_cross_entropy("liger", CPU)
    at_tensor_parallel_size(monkeypatch, 2)
    with pytest.raises(ValueError, match="no vocab-parallel form"):
        resolve_cross_entropy("liger", CUDA)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_cross_entropy("apex", CPU)


def test_a_model_asking_for_liger_on_cpu_fails_at_the_loss_with_the_reason(liger_importable):
    from megaphi.model import PhiForCausalLM

    model = PhiForCausalLM(tiny_config(cross_entropy="liger"))
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="runs on CUDA only"):
        model(ids, labels=ids)
    assert model(ids).shape == (1, 4, 300)  # logits need no loss implementation
