"""Cross-entropy over vocabulary-parallel logits, without gathering or upcasting the full logits.

Each rank holds logits for its slice of the (padded) vocabulary. Softmax statistics are computed
slice-locally in fp32, one row chunk at a time (max, sum of exp relative to that max, the target's
logit), and combined across ranks with two all-reduces of [tokens]-sized vectors. Two forms:

- ``vocab_parallel_cross_entropy(logits, ...)``: the logits exist (the lm_head ran before); the
  backward turns them into their gradient chunk by chunk, so the only full-size tensor is the
  logits themselves, in their own dtype.
- ``fused_linear_cross_entropy(hidden, weight, bias, ...)``: the lm_head projection is part of the
  loss. Logits exist one row chunk at a time in forward and again in backward (recomputed: one more
  lm_head GEMM instead of keeping [tokens x vocab] alive), so a larger micro batch fits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megaphi.parallel.collectives import copy_to_tensor_parallel_region
from megaphi.parallel.state import get_tensor_parallel_group, get_tensor_parallel_rank, get_tensor_parallel_world_size

# fp32 elements materialised at once (256 MiB): bounds the temporary memory of every chunked pass.
_CHUNK_ELEMENTS = 1 << 26


def _row_chunks(rows: int, cols: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType) -> None:
    if get_tensor_parallel_world_size() > 1:
        dist.all_reduce(x, op=op, group=get_tensor_parallel_group())


def _local_targets(target: torch.Tensor, vocab_start: int, valid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target ids relative to this rank's slice (0 where outside it) and whether each is inside."""
    local = target - vocab_start
    in_slice = (local >= 0) & (local < valid)
    return local.masked_fill(~in_slice, 0), in_slice


def _chunk_stats(
    logits: torch.Tensor, local_target: torch.Tensor, in_slice: torch.Tensor, stats: torch.Tensor, rows: slice
) -> None:
    """Fill stats[:, rows] = (max, sum exp(logit - max), target logit) of one chunk of fp32 logits."""
    row_max = logits.max(dim=-1).values
    stats[0, rows] = row_max
    stats[1, rows] = torch.exp(logits - row_max[:, None]).sum(dim=-1)
    picked = logits.gather(1, local_target[:, None]).squeeze(1)
    stats[2, rows] = torch.where(in_slice, picked, 0.0)


def _log_sum_exp(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's slice statistics -> (log-sum-exp over the whole vocabulary, target logit), per row.

    A rank whose slice is all padding has max -inf and sum 0, and adds nothing.
    """
    local_max = stats[0].clone()
    _all_reduce(stats[0], dist.ReduceOp.MAX)
    global_max = stats[0]
    sums = torch.stack([stats[1] * torch.exp(local_max - global_max), stats[2]])
    _all_reduce(sums, dist.ReduceOp.SUM)
    return torch.log(sums[0]) + global_max, sums[1]


def _logits_grad(
    logits: torch.Tensor,
    log_sum_exp: torch.Tensor,
    local_target: torch.Tensor,
    in_slice: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """(softmax - one_hot) * scale for one chunk of fp32 logits, in fp32 (overwrites ``logits``)."""
    probs = logits.sub_(log_sum_exp[:, None]).exp_()
    # scatter, not boolean indexing: no host sync
    probs.scatter_add_(1, local_target[:, None], -in_slice.to(probs.dtype)[:, None])
    return probs.mul_(scale[:, None])


def _valid_columns(local_vocab: int, vocab_size: int) -> tuple[int, int]:
    """This rank's first vocabulary id and how many of its columns are real (not padding)."""
    vocab_start = get_tensor_parallel_rank() * local_vocab
    return vocab_start, max(0, min(local_vocab, vocab_size - vocab_start))


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, target: torch.Tensor, vocab_size: int, ignore_index: int, inplace_backward: bool
    ) -> torch.Tensor:
        rows, local_vocab = logits.shape
        vocab_start, valid = _valid_columns(local_vocab, vocab_size)
        local_target, in_slice = _local_targets(target, vocab_start, valid)
        stats = logits.new_zeros((3, rows), dtype=torch.float32)
        stats[0] = float("-inf")
        for c in _row_chunks(rows, local_vocab) if valid > 0 else []:
            _chunk_stats(logits[c, :valid].float(), local_target[c], in_slice[c], stats, c)
        log_sum_exp, target_logit = _log_sum_exp(stats)
        keep = target != ignore_index
        loss = torch.where(keep, log_sum_exp - target_logit, 0.0)

        ctx.save_for_backward(logits, local_target, in_slice, keep, log_sum_exp)
        ctx.valid, ctx.inplace_backward, ctx.used = valid, inplace_backward, False
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.used and ctx.inplace_backward:
            raise RuntimeError(
                "the vocab-parallel cross-entropy reuses its logits buffer for the gradient and can "
                "be backpropagated only once; do not use retain_graph through the loss"
            )
        ctx.used = True
        logits, local_target, in_slice, keep, log_sum_exp = ctx.saved_tensors
        grad = logits if ctx.inplace_backward else torch.empty_like(logits)
        scale = torch.where(keep, grad_loss, 0.0)
        valid = ctx.valid
        for c in _row_chunks(*logits.shape) if valid > 0 else []:
            grad[c, :valid] = _logits_grad(
                logits[c, :valid].float(), log_sum_exp[c], local_target[c], in_slice[c], scale[c]
            ).to(grad.dtype)
        if valid < logits.shape[1]:
            grad[:, valid:] = 0
        return grad, None, None, None, None


def _check_vocab(local_vocab: int, vocab_size: int | None) -> int:
    padded = local_vocab * get_tensor_parallel_world_size()
    vocab_size = padded if vocab_size is None else vocab_size
    if not 0 < vocab_size <= padded:
        raise ValueError(
            f"vocab_size={vocab_size} must be in (0, {padded}] for logits with {local_vocab} "
            f"columns per tensor-parallel rank"
        )
    return vocab_size


def vocab_parallel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    vocab_size: int | None = None,
    ignore_index: int = -100,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """Per-token cross-entropy (fp32, shape of ``target``; 0 where target == ignore_index).

    ``logits``: [..., padded_vocab / tp], this rank's vocabulary slice, any float dtype.
    ``vocab_size``: the real vocabulary; columns at or past it are padding and are excluded.
    ``inplace_backward``: write the gradient into the logits buffer (saves one logits-sized tensor;
    only when nothing else uses the logits).
    """
    local_vocab = logits.shape[-1]
    vocab_size = _check_vocab(local_vocab, vocab_size)
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree on the token dims")
    loss = _VocabParallelCrossEntropy.apply(
        logits.reshape(-1, local_vocab), target.reshape(-1), vocab_size, ignore_index, inplace_backward
    )
    return loss.view(target.shape)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """lm_head projection + vocab-parallel cross-entropy, one row chunk of logits at a time.

    Backward recomputes each chunk's logits and turns them into the chunk's gradient, then into its
    share of the hidden-state gradient and of the weight and bias gradients (accumulated in fp32).
    Only hidden states, the weight and [tokens]-sized vectors are saved.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        target: torch.Tensor,
        vocab_size: int,
        ignore_index: int,
    ) -> torch.Tensor:
        rows, local_vocab = hidden.shape[0], weight.shape[0]
        vocab_start, valid = _valid_columns(local_vocab, vocab_size)
        local_target, in_slice = _local_targets(target, vocab_start, valid)
        # Padding rows of the weight are never multiplied: their logits would only be masked out.
        w, b = weight[:valid], None if bias is None else bias[:valid]
        stats = hidden.new_zeros((3, rows), dtype=torch.float32)
        stats[0] = float("-inf")
        for c in _row_chunks(rows, valid) if valid > 0 else []:
            _chunk_stats(F.linear(hidden[c], w, b).float(), local_target[c], in_slice[c], stats, c)
        log_sum_exp, target_logit = _log_sum_exp(stats)
        keep = target != ignore_index
        loss = torch.where(keep, log_sum_exp - target_logit, 0.0)

        ctx.save_for_backward(hidden, weight, bias, local_target, in_slice, keep, log_sum_exp)
        ctx.valid = valid
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, local_target, in_slice, keep, log_sum_exp = ctx.saved_tensors
        valid = ctx.valid
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        w, b = weight[:valid], None if bias is None else bias[:valid]
        scale = torch.where(keep, grad_loss, 0.0)
        # every row is written chunk by chunk, unless this rank's slice is all padding
        grad_hidden = (torch.empty_like(hidden) if valid > 0 else torch.zeros_like(hidden)) if want_hidden else None
        # fp32 accumulators: a half-precision running sum over chunks would round at every chunk.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if want_bias else None
        for c in _row_chunks(hidden.shape[0], valid) if valid > 0 else []:
            grad_logits = _logits_grad(
                F.linear(hidden[c], w, b).float(), log_sum_exp[c], local_target[c], in_slice[c], scale[c]
            )
            if grad_bias is not None:
                grad_bias[:valid] += grad_logits.sum(dim=0)
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, w, out=grad_hidden[c])
            if grad_weight is not None and grad_weight.dtype == hidden.dtype:
                grad_weight[:valid].addmm_(grad_logits.t(), hidden[c])
            elif grad_weight is not None:  # the product in the input dtype (tensor cores), the running sum in fp32
                grad_weight[:valid] += torch.mm(grad_logits.t(), hidden[c])
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    *,
    vocab_size: int | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Per-token cross-entropy of ``hidden @ weight.T + bias`` against ``target``, logits never whole.

    ``hidden``: [..., H], replicated over the tensor-parallel group (its gradient is all-reduced).
    ``weight`` [padded_vocab / tp, H] and ``bias``: this rank's rows of a column-parallel lm_head.
    Returns fp32 losses of ``target``'s shape, 0 where target == ignore_index.
    """
    local_vocab = weight.shape[0]
    vocab_size = _check_vocab(local_vocab, vocab_size)
    if hidden.shape[:-1] != target.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and target {tuple(target.shape)} disagree on the token dims")
    hidden = copy_to_tensor_parallel_region(hidden)
    loss = _FusedLinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, bias, target.reshape(-1), vocab_size, ignore_index
    )
    return loss.view(target.shape)
