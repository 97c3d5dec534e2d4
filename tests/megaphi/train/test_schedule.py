"""Learning-rate schedule: linear warmup, then linear or cosine decay to min_lr; what a resumed run changes."""

import math

import pytest

from megaphi.config import config_to_dict
from megaphi.train.config import OptimSection
from megaphi.train.schedule import learning_rate, schedule_change


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


def test_decay_steps_end_the_decay_before_the_last_step_and_hold_min_lr():
    optim = OptimSection(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay="linear", decay_steps=110)
    assert [learning_rate(s, optim, 300) for s in (60, 110, 250)] == pytest.approx(
        [learning_rate(s, OptimSection(**{**config_to_dict(optim), "decay_steps": None}), 110) for s in (60, 110, 110)]
    )


def saved_run(optim: OptimSection, steps: int) -> dict:
    """The config a checkpoint carries (its optim section and train.steps), as the trainer stores it."""
    return {"optim": config_to_dict(optim), "train": {"steps": steps}}


def test_a_longer_run_resumed_from_a_checkpoint_says_how_its_schedule_changes():
    optim = OptimSection(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay="linear")
    line = schedule_change(60, saved_run(optim, 110), optim, 210)
    assert line == (
        "megaphi.train: the learning-rate schedule differs from the checkpoint's: saved (warmup 10, "
        "linear 0.001 -> 0.0001 by step 110), now (warmup 10, linear 0.001 -> 0.0001 by step 210); "
        f"step 61 runs at lr {learning_rate(60, optim, 210):.3e} instead of "
        f"{learning_rate(60, optim, 110):.3e}; set optim.decay_steps=110 to keep the saved curve"
    )


def test_the_saved_curve_kept_with_decay_steps_or_unchanged_is_not_reported():
    optim = OptimSection(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay="cosine")
    assert schedule_change(60, saved_run(optim, 110), optim, 110) is None
    kept = OptimSection(**{**config_to_dict(optim), "decay_steps": 110})
    assert schedule_change(60, saved_run(optim, 110), kept, 500) is None
    weight_decay_only = OptimSection(**{**config_to_dict(optim), "weight_decay": 0.0})
    assert schedule_change(60, saved_run(optim, 110), weight_decay_only, 110) is None


def test_a_new_peak_rate_is_reported_without_the_decay_steps_hint():
    before, after = OptimSection(lr=1e-3), OptimSection(lr=5e-4)
    line = schedule_change(5, saved_run(before, 100), after, 100)
    assert "saved (warmup 0, linear 0.001 -> 0 by step 100), now (warmup 0, linear 0.0005 -> 0 by step 100)" in line
    assert "decay_steps" not in line
