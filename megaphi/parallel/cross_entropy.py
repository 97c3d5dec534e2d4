"""Cross-entropy over vocabulary-parallel logits, without gathering or upcasting the full logits.

Each rank holds logits for its slice of the (padded) vocabulary. The softmax statistics are
computed slice-locally in fp32, one row chunk at a time, and combined across ranks with two
all-reduces of [tokens]-sized vectors (max, then sum-exp and target logit together). The backward
pass turns the saved logits into the gradient (softmax - one_hot) chunk by chunk, so the only
full-size tensor is the logits themselves, in their own dtype.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megaphi.parallel.state import (get_tensor_parallel_group, get_tensor_parallel_rank,
                                    get_tensor_parallel_world_size)

# fp32 elements materialised at once (256 MiB): bounds the temporary memory of every chunked pass.
_CHUNK_ELEMENTS = 1 << 26


def _row_chunks(rows: int, cols: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp) -> None:
    if get_tensor_parallel_world_size() > 1:
        dist.all_reduce(x, op=op, group=get_tensor_parallel_group())


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, vocab_size: int, ignore_index: int,
                inplace_backward: bool) -> torch.Tensor:
        rows, local_vocab = logits.shape
        vocab_start = get_tensor_parallel_rank() * local_vocab
        # Columns past the real vocabulary are padding: they take no part in the softmax.
        valid = max(0, min(local_vocab, vocab_size - vocab_start))
        chunks = _row_chunks(rows, local_vocab)

        row_max = torch.full((rows,), float("-inf"), dtype=torch.float32, device=logits.device)
        if valid > 0:
            for c in chunks:
                row_max[c] = logits[c, :valid].max(dim=-1).values.float()
        _all_reduce(row_max, dist.ReduceOp.MAX)

        local_target = target - vocab_start
        in_slice = (local_target >= 0) & (local_target < valid)
        local_target = local_target.masked_fill(~in_slice, 0)
        stats = torch.zeros((2, rows), dtype=torch.float32, device=logits.device)  # sum_exp, target logit
        if valid > 0:
            for c in chunks:
                stats[0, c] = torch.exp(logits[c, :valid].float() - row_max[c, None]).sum(dim=-1)
            picked = logits.gather(1, local_target[:, None]).squeeze(1).float()
            stats[1] = torch.where(in_slice, picked, 0.0)
        _all_reduce(stats, dist.ReduceOp.SUM)

        log_sum_exp = torch.log(stats[0]) + row_max
        keep = target != ignore_index
        loss = torch.where(keep, log_sum_exp - stats[1], 0.0)

        ctx.save_for_backward(logits, local_target, in_slice, keep, log_sum_exp)
        ctx.valid, ctx.inplace_backward, ctx.used = valid, inplace_backward, False
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.used and ctx.inplace_backward:
            raise RuntimeError("the vocab-parallel cross-entropy reuses its logits buffer for the gradient and can "
                               "be backpropagated only once; do not use retain_graph through the loss")
        ctx.used = True
        logits, local_target, in_slice, keep, log_sum_exp = ctx.saved_tensors
        grad = logits if ctx.inplace_backward else torch.empty_like(logits)
        scale = torch.where(keep, grad_loss, 0.0)
        valid = ctx.valid
        one_hot_value = -in_slice.to(torch.float32)[:, None]  # scatter, not boolean indexing: no host sync
        for c in _row_chunks(*logits.shape) if valid > 0 else []:
            probs = torch.exp(logits[c, :valid].float() - log_sum_exp[c, None])
            probs.scatter_add_(1, local_target[c, None], one_hot_value[c])
            grad[c, :valid] = (probs * scale[c, None]).to(grad.dtype)
        if valid < logits.shape[1]:
            grad[:, valid:] = 0
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, vocab_size: int | None = None,
                                 ignore_index: int = -100, inplace_backward: bool = False) -> torch.Tensor:
    """Per-token cross-entropy (fp32, shape of ``target``; 0 where target == ignore_index).

    ``logits``: [..., padded_vocab / tp], this rank's vocabulary slice, any float dtype.
    ``vocab_size``: the real vocabulary; columns at or past it are padding and are excluded.
    ``inplace_backward``: write the gradient into the logits buffer (saves one logits-sized tensor;
    only when nothing else uses the logits).
    """
    local_vocab = logits.shape[-1]
    padded = local_vocab * get_tensor_parallel_world_size()
    vocab_size = padded if vocab_size is None else vocab_size
    if not 0 < vocab_size <= padded:
        raise ValueError(f"vocab_size={vocab_size} must be in (0, {padded}] for logits with {local_vocab} "
                         f"columns per tensor-parallel rank")
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree on the token dims")
    loss = _VocabParallelCrossEntropy.apply(logits.reshape(-1, local_vocab), target.reshape(-1), vocab_size,
                                            ignore_index, inplace_backward)
    return loss.view(target.shape)
