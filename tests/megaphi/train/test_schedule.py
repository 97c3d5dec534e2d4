"""Learning-rate schedule: linear warmup, then linear or cosine decay to min_lr."""
import math

import pytest

from megaphi.config import OptimSection
from megaphi.train.schedule import learning_rate


def test_warmup_rises_linearly_to_the_peak():
    optim = OptimSection(lr=1e-3, warmup_steps=4, decay="linear")
    assert [learning_rate(s, optim, 100) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def test_linear_decay_reaches_min_lr_at_the_last_step():
    optim = OptimSection(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay="linear")
    assert learning_rate(10, optim, 110) == pytest.approx(1e-3)
    assert learning_rate(60, optim, 110) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert learning_rate(110, optim, 110) == pytest.approx(1e-4)
    assert learning_rate(500, optim, 110) == pytest.approx(1e-4)  # past the end: stays at the floor


def test_cosine_decay_is_half_way_at_the_middle_and_monotone():
    optim = OptimSection(lr=2e-3, min_lr=0.0, warmup_steps=0, decay="cosine")
    assert learning_rate(50, optim, 100) == pytest.approx(1e-3)
    rates = [learning_rate(s, optim, 100) for s in range(101)]
    assert all(a >= b for a, b in zip(rates[:-1], rates[1:], strict=True))
    assert learning_rate(25, optim, 100) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)))


def test_constant_holds_the_peak_after_warmup():
    optim = OptimSection(lr=1e-4, warmup_steps=2, decay="constant")
    assert [learning_rate(s, optim, 10) for s in (1, 2, 9)] == pytest.approx([1e-4, 1e-4, 1e-4])
