"""Training: ``python -m megaphi.train --config configs/X.yaml [section.field=value ...] [--resume auto]``."""

from megaphi.train.cli import main

__all__ = ["main"]
