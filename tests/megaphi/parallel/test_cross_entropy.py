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
        torch.testing.assert_close(local.grad, parallel.shard_tensor(expected_grad, 1, rank, world_size),
                                   rtol=1e-5, atol=1e-6)
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
