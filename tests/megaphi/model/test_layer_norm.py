"""LayerNorm backend choice: apex's fused kernel only where apex is importable, torch's otherwise."""

import pytest
import torch

from megaphi.model import layer_norm as ln
from megaphi.model import PhiConfig, PhiForCausalLM
from tests.megaphi.tiny_phi import tiny_config


def test_auto_takes_apex_when_importable_and_torch_otherwise(monkeypatch):
    monkeypatch.setattr(ln, "apex_available", lambda: True)
    assert ln.resolve_layer_norm("auto") == "apex"
    assert ln.resolve_layer_norm("torch") == "torch"
    monkeypatch.setattr(ln, "apex_available", lambda: False)
    assert ln.resolve_layer_norm("auto") == "torch"


def test_explicit_apex_without_apex_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ln, "apex_available", lambda: False)
    with pytest.raises(ValueError, match="needs NVIDIA apex"):
        ln.resolve_layer_norm("apex")
    with pytest.raises(ValueError, match="layer_norm_backend='apex' needs NVIDIA apex"):
        PhiForCausalLM(tiny_config(layer_norm_backend="apex"))
    with pytest.raises(ValueError, match="layer_norm_backend='fused' must be one of"):
        PhiConfig(layer_norm_backend="fused")


def test_without_apex_the_model_uses_torch_layer_norm_and_says_so(monkeypatch):
    monkeypatch.setattr(ln, "apex_available", lambda: False)
    model = PhiForCausalLM(tiny_config(attn_backend="sdpa"))
    assert type(model.model.final_layernorm) is torch.nn.LayerNorm
    assert model.kernel_choices(torch.device("cpu")) == (
        "attention SDPA, layer norm torch LayerNorm, cross-entropy fused"
    )
