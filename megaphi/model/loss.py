"""The language-model loss: lm_head + cross-entropy, fused so that [tokens x vocab] logits never exist whole.

Three implementations (``PhiConfig.cross_entropy``):
- "fused": megaphi.parallel.fused_linear_cross_entropy, chunked over tokens, vocab-parallel under TP;
  runs anywhere (the fallback on CPU and without Triton);
- "liger": liger-kernel's Triton fused linear cross-entropy (CUDA, one tensor-parallel rank);
- "unfused": the lm_head's full logits, then the vocab-parallel loss over them (the reference).
"auto" takes liger where it applies, else fused.
"""

from __future__ import annotations

import importlib.util

import torch

from megaphi.model.config import CROSS_ENTROPY_IMPLS
from megaphi.parallel.cross_entropy import fused_linear_cross_entropy, vocab_parallel_cross_entropy
from megaphi.parallel.layers import ColumnParallelLinear
from megaphi.parallel.state import get_tensor_parallel_world_size

IGNORE_INDEX = -100


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_cross_entropy(name: str, device: torch.device) -> str:
    """The implementation that ``name`` means on ``device`` at this tensor-parallel size.

    liger's kernel has no vocab-parallel form, so it needs TP = 1; an explicit "liger" where it
    cannot run is an error, never a silent fallback.
    """
    if name not in CROSS_ENTROPY_IMPLS:
        raise ValueError(f"cross_entropy={name!r} must be one of {CROSS_ENTROPY_IMPLS}")
    tp = get_tensor_parallel_world_size()
    if name == "auto":
        return "liger" if liger_available() and device.type == "cuda" and tp == 1 else "fused"
    if name == "liger":
        if not liger_available():
            raise ValueError(
                "cross_entropy='liger' needs the liger-kernel package (pip install liger-kernel on a "
                "CUDA machine); use cross_entropy='auto' or 'fused' elsewhere"
            )
        if device.type != "cuda":
            raise ValueError(f"cross_entropy='liger' runs on CUDA only, not on {device.type}; use 'auto' or 'fused'")
        if tp > 1:
            raise ValueError(
                f"cross_entropy='liger' has no vocab-parallel form (tensor-parallel size {tp}); use 'auto' or 'fused'"
            )
    return name


def _liger_sum(
    hidden: torch.Tensor, lm_head: ColumnParallelLinear, labels: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    # Only the real vocabulary rows: padding rows would add exp(0) terms to the softmax.
    bias = None if lm_head.bias is None else lm_head.bias[:vocab_size]
    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
    return loss(lm_head.weight[:vocab_size], hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), bias)


def causal_lm_loss(
    hidden: torch.Tensor, lm_head: ColumnParallelLinear, labels: torch.Tensor, *, vocab_size: int, impl: str
) -> torch.Tensor:
    """Mean cross-entropy of ``lm_head(hidden)`` over the labels that are not IGNORE_INDEX."""
    impl = resolve_cross_entropy(impl, hidden.device)
    if impl == "liger":
        total = _liger_sum(hidden, lm_head, labels, vocab_size)
    elif impl == "fused":
        total = fused_linear_cross_entropy(
            hidden, lm_head.weight, lm_head.bias, labels, vocab_size=vocab_size, ignore_index=IGNORE_INDEX
        ).sum()
    else:
        # The logits are consumed only by the loss, so its backward may overwrite them with their gradient.
        total = vocab_parallel_cross_entropy(
            lm_head(hidden), labels, vocab_size=vocab_size, ignore_index=IGNORE_INDEX, inplace_backward=True
        ).sum()
    # a tensor, not a Python int: no host synchronisation
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
