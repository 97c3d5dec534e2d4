"""Learning-rate schedule: linear warmup, then linear or cosine decay to ``min_lr``.

The rate is a pure function of the step, so a resumed run needs no scheduler state to continue on
exactly the same curve, and fp16 steps skipped for overflow still advance it (as the step count does).
"""
from __future__ import annotations

import math

from megaphi.config import OptimSection


def learning_rate(step: int, optim: OptimSection, total_steps: int) -> float:
    """The rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < optim.warmup_steps:
        # (step + 1): the first step already moves the weights, with a small but non-zero rate.
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return optim.lr
    decay_steps = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    if optim.decay == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.min_lr + (optim.lr - optim.min_lr) * factor
