"""The in-place rotary on a fused qkv projection equals the composite form, in values and gradients."""
import pytest
import torch

from megaphi.model.rotary import RotaryEmbedding, apply_rotary, rotate_qk_

BATCH, SEQ, HEADS, HEAD_DIM, ROTARY_DIM = 2, 10, 4, 32, 16


def cos_sin(form: str, gen: torch.Generator):
    rotary = RotaryEmbedding(dim=ROTARY_DIM, max_positions=64, theta=10000.0)
    if form == "range":
        return rotary.for_range(5, SEQ, torch.device("cpu"), torch.float64)
    positions = torch.randint(0, 64, (BATCH, SEQ), generator=gen)
    return rotary.for_positions(positions, torch.float64)


def composite(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    q, k, v = qkv.unbind(dim=2)
    return torch.stack([apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v], dim=2)


@pytest.mark.parametrize("form", ["range", "positions"])
def test_in_place_qk_rotary_matches_the_composite_form_and_its_gradient(form):
    gen = torch.Generator().manual_seed(0)
    cos, sin = cos_sin(form, gen)
    weights = torch.randn(BATCH, SEQ, 3, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)
    leaf = torch.randn(BATCH, SEQ, 3, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64, requires_grad=True)

    expected = composite(leaf, cos, sin)
    (expected * weights).sum().backward()
    expected_grad, leaf.grad = leaf.grad, None

    qkv = leaf * 1.0  # a fresh non-leaf buffer, like the projection's output
    q, k, v = rotate_qk_(qkv, cos, sin).unbind(dim=2)
    actual = torch.stack([q, k, v], dim=2)
    (actual * weights).sum().backward()

    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(leaf.grad, expected_grad, rtol=0, atol=1e-12)
    # v and the pass-through half of every q/k head are untouched
    assert torch.equal(v, leaf[:, :, 2])
    assert torch.equal(actual[..., ROTARY_DIM:], leaf[..., ROTARY_DIM:])


def test_in_place_qk_rotary_passes_gradcheck():
    gen = torch.Generator().manual_seed(1)
    cos, sin = cos_sin("range", gen)
    leaf = torch.randn(1, SEQ, 3, 2, HEAD_DIM, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rotate_qk_(x * 1.0, cos, sin), (leaf,))
