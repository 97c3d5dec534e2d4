"""The attention backends agree with each other, and rotary matches transformers' Phi."""

import pytest
import torch
from transformers.models.phi import modeling_phi

from megaphi.model.attention import attend, flash_attn_available, padding_causal_mask, resolve_backend
from megaphi.model.rotary import RotaryEmbedding, apply_rotary


def qkv(q_len: int, k_len: int, device="cpu", dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, q_len, 4, 16), (2, k_len, 4, 16), (2, k_len, 4, 16)]
    return [torch.randn(s, generator=gen).to(device, dtype).requires_grad_() for s in shapes]


def run(backend: str, q_len: int, k_len: int, mask=None, **kw):
    q, k, v = qkv(q_len, k_len, **kw)
    out = attend(q, k, v, backend=backend, mask=mask)
    out.square().sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("q_len,k_len", [(12, 12), (1, 12), (3, 12)], ids=["prefill", "decode", "chunk"])
def test_sdpa_and_eager_agree_in_outputs_and_gradients(q_len, k_len):
    for eager, sdpa in zip(run("eager", q_len, k_len), run("sdpa", q_len, k_len), strict=True):
        torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


def test_sdpa_and_eager_agree_under_a_left_padding_mask():
    padding = torch.ones(2, 12, dtype=torch.long)
    padding[0, :5] = 0
    mask = padding_causal_mask(padding, 12)
    for eager, sdpa in zip(run("eager", 12, 12, mask), run("sdpa", 12, 12, mask), strict=True):
        assert torch.isfinite(sdpa).all()
        torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


def test_causality_holds():
    q, k, v = qkv(8, 8)
    out = attend(q, k, v, backend="sdpa")
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, 5:] += 1.0
    v2[:, 5:] += 1.0  # changing the future must not change the past
    changed = attend(q, k2, v2, backend="sdpa")
    assert torch.equal(out[:, :5], changed[:, :5]) and not torch.equal(out[:, 5:], changed[:, 5:])


@pytest.mark.skipif(not (flash_attn_available() and torch.cuda.is_available()), reason="needs flash-attn and CUDA")
def test_flash_agrees_with_sdpa_on_gpu():
    for flash, sdpa in zip(
        run("flash", 64, 64, device="cuda", dtype=torch.bfloat16),
        run("sdpa", 64, 64, device="cuda", dtype=torch.bfloat16),
        strict=True,
    ):
        torch.testing.assert_close(flash.float(), sdpa.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(flash_attn_available(), reason="flash-attn is installed here")
def test_asking_for_flash_without_flash_attn_is_a_clear_error():
    with pytest.raises(ValueError, match="needs the flash-attn package"):
        resolve_backend("flash")
    assert resolve_backend("auto") == "sdpa"


def test_partial_rotary_matches_transformers_phi():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 10, 4, 32, generator=gen)  # [batch, seq, heads, head_dim], 16 rotary dims
    rotary = RotaryEmbedding(dim=16, max_positions=64, theta=10000.0)
    cos, sin = rotary.for_range(5, 10, q.device, q.dtype)
    ours = apply_rotary(q, cos, sin)

    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
    angles = torch.arange(5, 15).float()[:, None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    q_t = q.transpose(1, 2)  # transformers rotates [batch, heads, seq, dim]
    rotated, _ = modeling_phi.apply_rotary_pos_emb(q_t[..., :16], q_t[..., :16], emb.cos()[None], emb.sin()[None])
    expected = torch.cat((rotated, q_t[..., 16:]), dim=-1).transpose(1, 2)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    positions = torch.arange(5, 15).expand(2, 10)
    cos_p, sin_p = rotary.for_positions(positions, q.dtype)
    assert torch.equal(apply_rotary(q, cos_p, sin_p), ours)
