"""Splitting a full state dict over tensor-parallel ranks, and merging it back, matches the model's own shards."""

import pytest
import torch

from megaphi.convert import (
    CheckpointError,
    check_divisible,
    config_padded_vocab_size,
    merge_state_dicts,
    split_state_dict,
)
from megaphi.convert.layout import COLUMN, QKV, REPLICATED, ROW, VOCAB, param_specs
from megaphi.model import PhiConfig, PhiForCausalLM
from tests.megaphi import tiny_phi


def tiny_config(**overrides) -> PhiConfig:
    return tiny_phi.tiny_config(**{"make_vocab_size_divisible_by": 8, **overrides})


def random_full_state_dict(config: PhiConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {s.name: torch.randn(s.shape, generator=g) for s in param_specs(config)}


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_split_then_merge_reproduces_every_tensor_exactly(tp):
    config = tiny_config()
    full = random_full_state_dict(config)
    merged = merge_state_dicts(split_state_dict(full, config, tp), config)
    assert merged.keys() == full.keys()
    for name, tensor in full.items():
        assert torch.equal(merged[name], tensor), name


def test_vocabulary_is_padded_with_zero_rows_to_a_multiple_of_divisible_by_times_tp():
    config = tiny_config(vocab_size=301)
    shards = split_state_dict(random_full_state_dict(config), config, 4)
    assert config_padded_vocab_size(config, 4) == 320
    embedding = torch.cat([s["model.embed_tokens.weight"] for s in shards])
    lm_bias = torch.cat([s["lm_head.bias"] for s in shards])
    assert embedding.shape == (320, 32)
    assert torch.count_nonzero(embedding[301:]) == 0 and torch.count_nonzero(lm_bias[301:]) == 0
    assert torch.count_nonzero(embedding[:301]) == 301 * 32


def test_each_rank_holds_q_k_v_of_its_own_heads():
    config = tiny_config()
    full = random_full_state_dict(config)
    qkv = full["model.layers.0.self_attn.qkv_proj.weight"]
    q, k, v = qkv.chunk(3)
    rank1 = split_state_dict(full, config, 2)[1]["model.layers.0.self_attn.qkv_proj.weight"]
    assert torch.equal(rank1, torch.cat([q[16:], k[16:], v[16:]]))


def test_the_layout_is_the_models_own_state_dict_at_tensor_parallel_size_one():
    config = tiny_config()
    torch.manual_seed(0)
    model = PhiForCausalLM(config)
    ours = split_state_dict(random_full_state_dict(config), config, 1)[0]
    theirs = model.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    # The split kinds agree with how the model marks its sharded parameters.
    params = dict(model.named_parameters())
    expected_dim = {COLUMN: 0, QKV: 0, VOCAB: 0, ROW: 1}
    for spec in param_specs(config):
        param = params[spec.name]
        if spec.split == REPLICATED:
            assert not getattr(param, "tensor_model_parallel", False), spec.name
        else:
            assert param.tensor_model_parallel and param.partition_dim == expected_dim[spec.split], spec.name
            assert param.partition_stride == (3 if spec.split == QKV else 1), spec.name
    model.load_state_dict(ours, strict=True)


@pytest.mark.parametrize(
    "field, overrides, tp",
    [
        ("num_attention_heads", dict(num_attention_heads=4), 3),
        ("intermediate_size", dict(intermediate_size=66), 4),
    ],
)
def test_a_config_that_does_not_divide_by_tp_is_refused_naming_the_field(field, overrides, tp):
    config = tiny_config(**overrides)
    with pytest.raises(CheckpointError, match=rf"^{field} \d+ is not divisible by tensor_parallel_size {tp}"):
        check_divisible(config, tp)
    with pytest.raises(CheckpointError, match=field):
        split_state_dict(random_full_state_dict(config), config, tp)


def test_merging_shards_with_a_wrong_shape_names_the_key_and_rank():
    config = tiny_config()
    shards = split_state_dict(random_full_state_dict(config), config, 2)
    shards[1]["model.layers.1.mlp.fc2.weight"] = torch.zeros(32, 64)
    with pytest.raises(
        CheckpointError,
        match=r"rank 1 of 2\): key 'model.layers.1.mlp.fc2.weight' has shape "
        r"\[32, 64\], expected \[32, 32\]",
    ):
        merge_state_dicts(shards, config)
