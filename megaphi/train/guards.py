"""Divergence guards: when training cannot usefully continue, say why instead of burning compute."""

from __future__ import annotations

import math
from typing import Any

from megaphi.train.config import TrainSection


class TrainingStopped(RuntimeError):
    """Training cannot usefully continue (diverged, or fp16 loss scale stuck); the message says why."""


class Guards:
    """fp16: count overflow skips and stop when the scale sits at its minimum; bf16/fp32: stop on NaN/inf."""

    def __init__(self, train: TrainSection) -> None:
        self.precision = train.precision
        self.min_scale = train.min_loss_scale
        self.patience = train.max_steps_at_min_loss_scale
        self.skips_at_min = 0

    def after_step(self, step: int, skipped: bool, loss_scale: float) -> str | None:
        """``loss_scale`` is the scale the step ran with: an overflow at a higher scale still had room to lower it."""
        if self.precision != "fp16":
            return None
        self.skips_at_min = self.skips_at_min + 1 if skipped and loss_scale <= self.min_scale else 0
        if self.skips_at_min >= self.patience:
            return (
                f"fp16 loss scale stuck at its minimum {self.min_scale:g} with overflowing gradients for "
                f"{self.skips_at_min} steps (step {step}); the run diverged: lower optim.lr or use "
                "train.precision=bf16"
            )
        return None

    def check_losses(self, records: list[dict[str, Any]]) -> str | None:
        if self.precision == "fp16":
            return None  # a non-finite fp16 loss is an overflow: skipped and handled by after_step
        for rec in records:
            if not math.isfinite(rec["loss"]):
                return (
                    f"loss is {rec['loss']} at step {rec['step']} in {self.precision}; the run diverged: "
                    "lower optim.lr or raise optim.warmup_steps"
                )
        return None
