"""Rotary on a fused qkv projection equals the composite form, in values and gradients, and writes nothing in place."""

import pytest
import torch

from megaphi.model.rotary import RotaryEmbedding, apply_rotary, rotary_qkv

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
def test_qkv_rotary_matches_the_composite_form_and_its_gradient(form):
    gen = torch.Generator().manual_seed(0)
    cos, sin = cos_sin(form, gen)
    weights = torch.randn(BATCH, SEQ, 3, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64)
    leaf = torch.randn(BATCH, SEQ, 3, HEADS, HEAD_DIM, generator=gen, dtype=torch.float64, requires_grad=True)

    expected = composite(leaf, cos, sin)
    (expected * weights).sum().backward()
    expected_grad, leaf.grad = leaf.grad, None

    qkv = leaf * 1.0  # a non-leaf buffer, like the projection's output
    before = qkv.detach().clone()
    q, k, v = rotary_qkv(qkv, cos, sin)
    actual = torch.stack([q, k, v], dim=2)
    (actual * weights).sum().backward()

    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(leaf.grad, expected_grad, rtol=0, atol=1e-12)
    assert torch.equal(qkv, before)  # the projection's output is not written
    assert v.data_ptr() == qkv[:, :, 2].data_ptr()  # v is a view, no copy
    assert torch.equal(actual[..., ROTARY_DIM:], leaf[..., ROTARY_DIM:])  # the pass-through dims


def test_qkv_rotary_backward_has_no_slice_assignment_or_in_place_node():
    gen = torch.Generator().manual_seed(2)
    cos, sin = cos_sin("range", gen)
    projection = torch.randn(BATCH, SEQ, 3 * HEADS * HEAD_DIM, dtype=torch.float64, requires_grad=True) * 1.0
    qkv = projection.view(BATCH, SEQ, 3, HEADS, HEAD_DIM)  # a view, as the model's qkv_proj output is
    q, k, v = rotary_qkv(qkv, cos, sin)
    names, stack = set(), [(q + k + v).sum().grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack += [n for n, _ in node.next_functions]
    assert "CopySlices" not in names and not any("AsStrided" in n for n in names), names


def test_qkv_rotary_passes_gradcheck():
    gen = torch.Generator().manual_seed(1)
    cos, sin = cos_sin("range", gen)
    leaf = torch.randn(1, SEQ, 3, 2, HEAD_DIM, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rotary_qkv(x * 1.0, cos, sin), (leaf,))
