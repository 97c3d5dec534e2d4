"""Engine set-up pieces that need no process group: optimizer groups, the DeepSpeed config, FLOP counting."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megaphi.config import ConfigError, load_config
from megaphi.train.config import TrainConfig, plan_batches
from megaphi.model import PhiForCausalLM, get_preset
from tests.megaphi.train.conftest import REPO
from megaphi.train.engine import (
    deepspeed_config,
    full_parameter_count,
    model_flops_per_token,
    param_groups,
    peak_tflops_of,
    resolve_model_config,
)


def tiny_model():
    torch.manual_seed(0)
    return PhiForCausalLM(get_preset("phi-tiny", attn_backend="eager"))


def test_weight_decay_skips_biases_and_layernorm():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert "model.layers.0.self_attn.qkv_proj.weight" in decayed and "lm_head.weight" in decayed
    assert "model.embed_tokens.weight" in decayed
    assert all(n.endswith("bias") or "layernorm" in n for n in exempt)
    assert {"model.final_layernorm.weight", "lm_head.bias", "model.layers.1.mlp.fc2.bias"} <= exempt
    assert len(decayed) + len(exempt) == len(names)


def test_deepspeed_config_takes_batch_precision_and_clipping_from_the_typed_config(tmp_path):
    template = REPO / "ds_configs" / "zero2_fp16.json"
    cfg = load_config(
        TrainConfig,
        None,
        [
            "train.global_batch_size=64",
            "train.micro_batch_size=4",
            "train.precision=fp16",
            "optim.grad_clip=0.5",
            "train.loss_scale_window=50",
            "train.initial_loss_scale_power=12",
            f"train.deepspeed_config={template}",
        ],
    )
    ds = deepspeed_config(cfg, plan_batches(cfg.train, 2))
    batch = (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"])
    assert batch == (64, 4, 8)
    assert ds["gradient_clipping"] == 0.5
    assert ds["fp16"]["enabled"] and not ds["bf16"]["enabled"]
    assert (ds["fp16"]["initial_scale_power"], ds["fp16"]["loss_scale_window"], ds["fp16"]["loss_scale"]) == (12, 50, 0)
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["overlap_comm"]  # from the template
    assert ds["zero_allow_untested_optimizer"]
    # one data-parallel rank: no gradient communication to overlap
    assert not deepspeed_config(cfg, plan_batches(cfg.train, 1))["zero_optimization"]["overlap_comm"]


def test_template_that_sets_a_batch_size_is_rejected(tmp_path):
    template = tmp_path / "ds.json"
    template.write_text(json.dumps({"train_batch_size": 32, "zero_optimization": {"stage": 2}}))
    cfg = load_config(TrainConfig, None, [f"train.deepspeed_config={template}"])
    with pytest.raises(ConfigError, match=r"^train\.deepspeed_config: .* sets 'train_batch_size'"):
        deepspeed_config(cfg, plan_batches(cfg.train, 1))


def test_model_overrides_apply_to_the_preset_and_unknown_ones_are_named():
    cfg = load_config(TrainConfig, None, ["model.preset=phi-tiny", "model.overrides.resid_pdrop=0.1"])
    assert resolve_model_config(cfg).resid_pdrop == 0.1
    assert resolve_model_config(cfg).hidden_size == get_preset("phi-tiny").hidden_size  # unset: the preset's
    # checked when the recipe loads, like every other field: the overrides are PhiConfig's own fields
    with pytest.raises(
        ConfigError,
        match=r"^model\.overrides\.hidden: unknown field; model\.overrides accepts "
        r".*hidden_size",
    ):
        load_config(TrainConfig, None, ["model.overrides.hidden=3"])
    with pytest.raises(ConfigError, match=r"^model\.preset: .*unknown model preset"):
        resolve_model_config(load_config(TrainConfig, None, ["model.preset=phi-9"]))


@pytest.mark.slow
def test_parameter_count_matches_transformers_phi():
    from transformers import PhiConfig as HFPhiConfig, PhiForCausalLM as HFPhi

    config = get_preset("phi-tiny")
    hf = HFPhi(
        HFPhiConfig(
            **{
                k: getattr(config, k)
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "max_position_embeddings",
                    "partial_rotary_factor",
                )
            }
        )
    )
    assert full_parameter_count(tiny_model()) == sum(p.numel() for p in hf.parameters())


def test_model_flops_per_token_is_three_forward_passes_of_matmuls():
    """6N + 12LHs against torch's FLOP counter on a real forward pass (x3 for forward + backward)."""
    model = tiny_model()
    config, seq = model.config, 64
    tokens = torch.randint(0, config.vocab_size, (2, seq))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens)
    measured = 3 * counter.get_total_flops() / tokens.numel()
    predicted = model_flops_per_token(config, full_parameter_count(model), seq)
    # The formula also counts biases and LayerNorm weights as matmul parameters (about 1% here).
    assert predicted == pytest.approx(measured, rel=0.02)


def test_peak_tflops_tell_the_h100_variants_apart():
    assert peak_tflops_of("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_of("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops_of("NVIDIA H100 NVL") == 835.0
    assert peak_tflops_of("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_of("Some Future GPU") is None
