"""Learning-rate schedule: linear warmup, then linear or cosine decay to ``min_lr``.

The rate is a pure function of the step, so a resumed run needs no scheduler state to continue on
exactly the same curve, and fp16 steps skipped for overflow still advance it (as the step count does).

A resumed run follows *this* run's schedule: raising ``train.steps`` stretches the decay (the rate
at the resume step jumps up), which :func:`schedule_change` puts in one line at start.
``optim.decay_steps`` keeps the saved run's curve instead (decay to ``min_lr`` by then, then flat).
"""

from __future__ import annotations

import math
from typing import Any

from megaphi.train.config import OptimSection


def decay_end(optim: OptimSection, total_steps: int) -> int:
    """The step where the rate reaches ``min_lr``."""
    return optim.decay_steps if optim.decay_steps is not None else total_steps


def learning_rate(step: int, optim: OptimSection, total_steps: int) -> float:
    """The rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if step < optim.warmup_steps:
        # (step + 1): the first step already moves the weights, with a small but non-zero rate.
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return optim.lr
    decay_steps = max(1, decay_end(optim, total_steps) - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    if optim.decay == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.min_lr + (optim.lr - optim.min_lr) * factor


def describe(optim: OptimSection, total_steps: int) -> str:
    shape = f"{optim.decay} {optim.lr:g} -> {optim.min_lr:g}" if optim.decay != "constant" else f"constant {optim.lr:g}"
    return f"warmup {optim.warmup_steps}, {shape} by step {decay_end(optim, total_steps)}"


def schedule_change(step: int, saved: dict[str, Any], optim: OptimSection, total_steps: int) -> str | None:
    """One line comparing the checkpoint's schedule with this run's from ``step`` on; None when they agree.

    ``saved`` is the saving run's config as stored in its checkpoint (``optim`` and ``train.steps``).
    """
    known = {name: saved["optim"][name] for name in OptimSection.__dataclass_fields__ if name in saved["optim"]}
    before, before_total = OptimSection(**known), saved["train"]["steps"]
    curve = OptimSection.__dataclass_fields__.keys() - {"weight_decay", "beta1", "beta2", "eps", "grad_clip"}
    same_shape = all(getattr(before, name) == getattr(optim, name) for name in curve if name != "decay_steps")
    if same_shape and decay_end(before, before_total) == decay_end(optim, total_steps):
        return None
    old, new = learning_rate(step, before, before_total), learning_rate(step, optim, total_steps)
    keep = f"; set optim.decay_steps={decay_end(before, before_total)} to keep the saved curve" if same_shape else ""
    return (
        f"megaphi.train: the learning-rate schedule differs from the checkpoint's: saved ({describe(before, before_total)}), "
        f"now ({describe(optim, total_steps)}); step {step + 1} runs at lr {new:.3e} instead of {old:.3e}{keep}"
    )
