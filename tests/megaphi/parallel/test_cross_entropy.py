"""Vocab-parallel cross-entropy equals the plain cross-entropy over the real vocabulary."""

import pytest
import torch
import torch.nn.functional as F

from megaphi import parallel
from megaphi.parallel import cross_entropy
from tests.distributed import spawn


def _reference(logits: torch.Tensor, target: torch.Tensor, vocab_size: int):
    """Per-token loss and logits gradient (of the loss summed with weights) from torch's own CE."""
    logits = logits.detach().float().requires_grad_()
    loss = F.cross_entropy(logits[:, :vocab_size], target, ignore_index=-100, reduction="none")
    weights = torch.linspace(0.5, 1.5, len(target))
    (loss * weights).sum().backward()
    return loss.detach(), logits.grad, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_torch_cross_entropy_across_chunks_with_padding_and_ignored_targets(monkeypatch, dtype):
    monkeypatch.setattr(cross_entropy, "_CHUNK_ELEMENTS", 3 * 128)  # 3 rows per chunk: 4 uneven chunks
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(11, 128, generator=gen)).to(dtype)
    target = torch.randint(0, 100, (11,), generator=gen)
    target[[2, 7]] = -100
    expected_loss, expected_grad, weights = _reference(logits, target, vocab_size=100)
    leaf = logits.clone().requires_grad_()
    loss = parallel.vocab_parallel_cross_entropy(leaf, target, vocab_size=100)
    (loss * weights).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(loss, expected_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(leaf.grad.float(), expected_grad, rtol=tol, atol=tol)
    assert loss[2] == 0 and leaf.grad[7].abs().sum() == 0 and leaf.grad[:, 100:].abs().sum() == 0
    assert leaf.grad.dtype == dtype


def test_inplace_backward_refuses_a_second_backward():
    logits = torch.randn(4, 8, requires_grad=True)
    hidden = logits * 1.0  # a non-leaf buffer the loss may overwrite
    loss = parallel.vocab_parallel_cross_entropy(hidden, torch.tensor([1, 2, 3, 4]), inplace_backward=True).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated only once"):
        loss.backward()


def test_rejects_mismatched_shapes_and_vocab():
    with pytest.raises(ValueError, match=r"logits \(4, 8\) and target \(5,\) disagree"):
        parallel.vocab_parallel_cross_entropy(torch.randn(4, 8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size=9 must be in"):
        parallel.vocab_parallel_cross_entropy(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), vocab_size=9)


def _sharded_equals_unsharded(rank: int, world_size: int) -> None:
    parallel.initialize(world_size)
    gen = torch.Generator().manual_seed(0)
    # vocab 100 over 2 x 128 columns: rank 1 holds only padding, and must still take part.
    for vocab_size, padded in ((256, 256), (200, 256), (100, 256)):
        full = 3 * torch.randn(9, padded, generator=gen)
        target = torch.randint(0, vocab_size, (9,), generator=gen)
        target[4] = -100
        expected_loss, expected_grad, weights = _reference(full, target, vocab_size)
        local = parallel.shard_tensor(full, 1, rank, world_size).requires_grad_()
        loss = parallel.vocab_parallel_cross_entropy(local, target, vocab_size=vocab_size)
        (loss * weights).sum().backward()
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            local.grad, parallel.shard_tensor(expected_grad, 1, rank, world_size), rtol=1e-5, atol=1e-6
        )
    # The gather/scatter pair is its own adjoint: gather(scatter(x)) == x, gradients flow back whole.
    x = torch.randn(3, 8, generator=gen, requires_grad=True)
    y = parallel.gather_from_tensor_parallel_region(parallel.scatter_to_tensor_parallel_region(x))
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    parallel.destroy()


@pytest.mark.slow
def test_vocab_parallel_loss_equals_the_unsharded_loss_at_tp2():
    spawn(_sharded_equals_unsharded, 2)


def _linear_reference(hidden, weight, bias, target, vocab_size):
    """Loss and gradients of lm_head + torch's cross-entropy over the real vocabulary (logits whole)."""
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    logits = torch.nn.functional.linear(*leaves)
    loss = F.cross_entropy(logits[:, :vocab_size], target, ignore_index=-100, reduction="none")
    weights = torch.linspace(0.5, 1.5, len(target))
    (loss * weights).sum().backward()
    return loss.detach(), [leaf.grad for leaf in leaves], weights


def _linear_inputs(gen, rows=13, hidden_size=16, padded=128, vocab_size=100):
    hidden = torch.randn(rows, hidden_size, generator=gen)
    weight = torch.randn(padded, hidden_size, generator=gen)
    weight[vocab_size:] = 0  # the padded rows of the lm_head, as the model builds them
    bias = torch.randn(padded, generator=gen)
    bias[vocab_size:] = 0
    target = torch.randint(0, vocab_size, (rows,), generator=gen)
    target[[3, 8]] = -100
    return hidden, weight, bias, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_loss_and_gradients_equal_the_unfused_reference_across_chunks(monkeypatch, dtype):
    monkeypatch.setattr(cross_entropy, "_CHUNK_ELEMENTS", 4 * 100)  # 4 rows per chunk: 4 uneven chunks
    hidden, weight, bias, target = _linear_inputs(torch.Generator().manual_seed(0))
    hidden, weight, bias = (t.to(dtype) for t in (hidden, weight, bias))
    expected_loss, expected_grads, weights = _linear_reference(
        *(t.float() for t in (hidden, weight, bias)), target, vocab_size=100
    )
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    loss = parallel.fused_linear_cross_entropy(*leaves, target, vocab_size=100)
    (loss * weights).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 5e-2  # bf16 logits: 8 bits of mantissa
    torch.testing.assert_close(loss, expected_loss, rtol=tol, atol=tol)
    for leaf, expected in zip(leaves, expected_grads, strict=True):
        assert leaf.grad.dtype == dtype
        torch.testing.assert_close(leaf.grad.float(), expected, rtol=tol, atol=tol)
    assert loss[3] == 0 and leaves[1].grad[100:].abs().sum() == 0 and leaves[2].grad[100:].abs().sum() == 0


def test_fused_linear_loss_keeps_no_logits_for_backward(monkeypatch):
    """Only hidden states, the weight and per-token vectors are saved: nothing of size tokens x vocab."""
    monkeypatch.setattr(cross_entropy, "_CHUNK_ELEMENTS", 4 * 100)
    hidden, weight, bias, target = _linear_inputs(torch.Generator().manual_seed(1), rows=64, hidden_size=8)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        parallel.fused_linear_cross_entropy(*leaves, target, vocab_size=100).sum().backward()
    assert saved and max(saved) == weight.numel() < 64 * 100
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        logits = torch.nn.functional.linear(*leaves)
        parallel.vocab_parallel_cross_entropy(logits, target, vocab_size=100).sum().backward()
    assert max(saved) == 64 * 128  # the unfused form keeps the whole logits


def test_fused_linear_loss_without_bias_and_frozen_weight():
    hidden, weight, _, target = _linear_inputs(torch.Generator().manual_seed(2))
    expected = F.cross_entropy(hidden @ weight[:100].t(), target, ignore_index=-100, reduction="none")
    leaf = hidden.clone().requires_grad_()
    loss = parallel.fused_linear_cross_entropy(leaf, weight, None, target, vocab_size=100)
    loss.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert leaf.grad is not None and weight.grad is None
    with pytest.raises(ValueError, match=r"hidden \(13, 16\) and target \(12,\) disagree"):
        parallel.fused_linear_cross_entropy(hidden, weight, None, target[:12])


def _fused_sharded_equals_unsharded(rank: int, world_size: int) -> None:
    parallel.initialize(world_size)
    gen = torch.Generator().manual_seed(0)
    # vocab 100 over 2 x 64 rows: rank 1 holds mostly padding; 64 and 128 fill one or both slices.
    for vocab_size in (100, 64, 128):
        hidden, weight, bias, target = _linear_inputs(gen, vocab_size=vocab_size)
        expected_loss, (grad_hidden, grad_weight, grad_bias), weights = _linear_reference(
            hidden, weight, bias, target, vocab_size
        )
        local_hidden = hidden.clone().requires_grad_()
        local_weight = parallel.shard_tensor(weight, 0, rank, world_size).requires_grad_()
        local_bias = parallel.shard_tensor(bias, 0, rank, world_size).requires_grad_()
        loss = parallel.fused_linear_cross_entropy(
            local_hidden, local_weight, local_bias, target, vocab_size=vocab_size
        )
        (loss * weights).sum().backward()
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(local_hidden.grad, grad_hidden, rtol=1e-5, atol=1e-5)  # all-reduced over TP
        torch.testing.assert_close(
            local_weight.grad, parallel.shard_tensor(grad_weight, 0, rank, world_size), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            local_bias.grad, parallel.shard_tensor(grad_bias, 0, rank, world_size), rtol=1e-5, atol=1e-5
        )
    parallel.destroy()


@pytest.mark.slow
def test_fused_linear_loss_equals_the_unsharded_loss_at_tp2():
    spawn(_fused_sharded_equals_unsharded, 2)
