"""PhiForCausalLM is the same network as transformers' PhiForCausalLM, and its own contracts hold."""

import pytest
import torch
import torch.nn.functional as F
import transformers

from megaphi.model import PhiConfig, PhiForCausalLM, get_preset
from tests.megaphi import tiny_phi

VOCAB = 300  # pads to 384: exercises the padded vocabulary rows


def tiny_config(**overrides) -> PhiConfig:
    """tiny_phi's model, wider (hidden 64, MLP 256) and with a longer context (128)."""
    values = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, max_position_embeddings=128)
    return tiny_phi.tiny_config(**{**values, **overrides})


def hf_reference(config: PhiConfig, attn_implementation: str = "eager") -> transformers.PhiForCausalLM:
    hf_config = transformers.PhiConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        partial_rotary_factor=config.partial_rotary_factor,
        rope_theta=config.rope_theta,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act=config.hidden_act,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(1)
    model = transformers.PhiForCausalLM(hf_config).eval()
    with torch.no_grad():  # larger weights, random biases and LayerNorms: every parameter shows in the logits
        for name, p in model.named_parameters():
            p.normal_(1.0 if "layernorm.weight" in name else 0.0, 0.1)
    return model


def load_from_hf(model: PhiForCausalLM, hf: transformers.PhiForCausalLM) -> None:
    """Copy HF weights in: fuse q/k/v, zero-pad the vocabulary rows."""
    src = hf.state_dict()
    padded = model.model.padded_vocab_size

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(padded - t.shape[0], *t.shape[1:])])

    dst = {}
    for name in model.state_dict():
        if "qkv_proj" in name:
            kind = name.rsplit(".", 1)[1]
            prefix = name.replace("qkv_proj." + kind, "")
            dst[name] = torch.cat([src[f"{prefix}{p}_proj.{kind}"] for p in "qkv"])
        elif name in ("model.embed_tokens.weight", "lm_head.weight", "lm_head.bias"):
            dst[name] = pad(src[name])
        else:
            dst[name] = src[name]
    model.load_state_dict(dst, strict=True)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_logits_equal_transformers_phi(backend):
    config = tiny_config(attn_backend=backend)
    hf = hf_reference(config)
    model = PhiForCausalLM(config).eval()
    load_from_hf(model, hf)
    input_ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(input_ids).logits
        logits = model(input_ids)
    assert logits.shape == (2, 24, VOCAB)
    assert (logits - expected).abs().max() < 1e-4


def test_kv_cache_decode_equals_full_forward_and_transformers():
    config = tiny_config()
    hf = hf_reference(config)
    model = PhiForCausalLM(config).eval()
    load_from_hf(model, hf)
    input_ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(input_ids)
        cache = model.new_kv_cache(batch_size=2, max_seq_len=32)
        steps = [model(input_ids[:, :12], kv_cache=cache)]  # prefill
        steps.append(model(input_ids[:, 12:15], kv_cache=cache))  # a multi-token chunk onto a filled cache
        steps += [model(input_ids[:, t : t + 1], kv_cache=cache) for t in range(15, 20)]
        incremental = torch.cat(steps, dim=1)
        expected = hf(input_ids).logits
    assert cache.length == 20
    assert (incremental - full).abs().max() < 1e-5
    assert (incremental - expected).abs().max() < 1e-4


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_left_padded_batch_decodes_like_each_sequence_alone(backend):
    model = PhiForCausalLM(tiny_config(attn_backend=backend)).eval()
    gen = torch.Generator().manual_seed(3)
    long, short = torch.randint(0, VOCAB, (1, 10), generator=gen), torch.randint(0, VOCAB, (1, 6), generator=gen)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1)])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    next_tokens = torch.randint(0, VOCAB, (2, 3), generator=gen)
    with torch.no_grad():
        cache = model.new_kv_cache(2, 16)
        batched = [model(batch, kv_cache=cache, attention_mask=mask)[:, -1]]
        for t in range(3):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            batched.append(model(next_tokens[:, t : t + 1], kv_cache=cache, attention_mask=mask)[:, -1])
        for row, seq in enumerate([long, short]):
            alone = model(torch.cat([seq, next_tokens[row : row + 1]], dim=1))[0, -4:]
            got = torch.stack([step[row] for step in batched])
            assert torch.isfinite(got).all()
            assert (got - alone).abs().max() < 1e-4


@pytest.mark.parametrize("cross_entropy", ["fused", "unfused"])
def test_loss_is_mean_cross_entropy_over_unignored_labels_with_matching_gradients(cross_entropy):
    torch.manual_seed(0)
    model = PhiForCausalLM(tiny_config(cross_entropy=cross_entropy))
    input_ids = torch.randint(0, VOCAB, (2, 16))
    labels = torch.randint(0, VOCAB, (2, 16))
    labels[0, :5] = -100
    loss = model(input_ids, labels=labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    reference = F.cross_entropy(model(input_ids).flatten(0, 1), labels.flatten(), ignore_index=-100)
    reference.backward()
    assert loss.shape == () and abs(loss.item() - reference.item()) < 1e-5
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_phi1_preset_has_exactly_1418270720_parameters():
    with torch.device("meta"):
        model = PhiForCausalLM(get_preset("phi-1"))
    assert sum(p.numel() for p in model.parameters()) == 1_418_270_720


def test_presets_have_the_published_shapes():
    small = get_preset("phi-1-small")
    assert (small.num_hidden_layers, small.hidden_size, small.intermediate_size, small.num_attention_heads) == (
        20,
        1024,
        4096,
        16,
    )
    assert get_preset("phi-tiny", vocab_size=512).vocab_size == 512
    with pytest.raises(ValueError, match="unknown model preset 'phi-2'"):
        get_preset("phi-2")


def test_state_dict_follows_the_checkpoint_contract():
    config = tiny_config()
    shapes = {n: tuple(t.shape) for n, t in PhiForCausalLM(config).state_dict().items()}
    assert shapes["model.embed_tokens.weight"] == (384, 64)
    assert shapes["model.layers.1.self_attn.qkv_proj.weight"] == (192, 64)
    assert shapes["model.layers.1.self_attn.dense.weight"] == (64, 64)
    assert shapes["model.layers.1.mlp.fc1.weight"] == (256, 64)
    assert shapes["model.layers.1.mlp.fc2.bias"] == (64,)
    assert shapes["model.final_layernorm.weight"] == (64,)
    assert shapes["lm_head.weight"] == (384, 64) and shapes["lm_head.bias"] == (384,)
    assert len(shapes) == 2 + 2 * 10 + 2 + 1


def test_padded_vocab_rows_are_zero_and_never_predicted():
    model = PhiForCausalLM(tiny_config())
    for weight in (model.model.embed_tokens.weight, model.lm_head.weight):
        assert weight[VOCAB:].abs().sum() == 0 and weight[:VOCAB].std() > 0.01
    assert model(torch.randint(0, VOCAB, (1, 4))).shape[-1] == VOCAB


def test_config_round_trips_and_rejects_bad_fields():
    config = tiny_config(resid_pdrop=0.1)
    assert PhiConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown PhiConfig field.*'hidden'"):
        PhiConfig.from_dict({**config.to_dict(), "hidden": 3})
    with pytest.raises(ValueError, match="hidden_size=64 must be divisible by num_attention_heads=5"):
        tiny_config(num_attention_heads=5)
    with pytest.raises(ValueError, match="attn_backend='cuda'"):
        tiny_config(attn_backend="cuda")
    with pytest.raises(ValueError, match="cross_entropy='triton' must be one of"):
        tiny_config(cross_entropy="triton")


def test_dropout_is_active_in_training_and_off_in_eval():
    model = PhiForCausalLM(tiny_config(resid_pdrop=0.1, embd_pdrop=0.1, attention_dropout=0.1))
    input_ids = torch.randint(0, VOCAB, (1, 8))
    assert not torch.equal(model(input_ids), model(input_ids))
    model.eval()
    assert torch.equal(model(input_ids), model(input_ids))


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    input_ids = torch.randint(0, VOCAB, (2, 16))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = PhiForCausalLM(
            tiny_config(activation_checkpointing=checkpointing, attention_dropout=0.1, resid_pdrop=0.1)
        )
        loss = model(input_ids, labels=input_ids)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b)


def test_kv_cache_rejects_overflow_and_wrong_batch():
    model = PhiForCausalLM(tiny_config()).eval()
    cache = model.new_kv_cache(1, 8)
    with pytest.raises(ValueError, match="cannot take 9 more"):
        model(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="batch size 2 differs"):
        model(torch.zeros(2, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="exceed max_position_embeddings=128"):
        model(torch.zeros(1, 129, dtype=torch.long))
