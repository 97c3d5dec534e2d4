"""The divergence guards decide from what a step reports: overflow skips at the minimum fp16 scale, non-finite losses."""

from megaphi.config import load_config
from megaphi.train.config import TrainConfig
from megaphi.train.guards import Guards


def test_fp16_guard_stops_after_the_configured_overflows_at_the_minimum_scale():
    cfg = load_config(
        TrainConfig, None, ["train.precision=fp16", "train.min_loss_scale=1", "train.max_steps_at_min_loss_scale=3"]
    )
    guard = Guards(cfg.train)
    assert guard.after_step(1, skipped=True, loss_scale=4) is None  # overflow above the minimum: normal
    assert guard.after_step(2, skipped=True, loss_scale=1) is None
    assert guard.after_step(3, skipped=False, loss_scale=1) is None  # a good step resets the count
    assert guard.after_step(4, skipped=True, loss_scale=1) is None
    assert guard.after_step(5, skipped=True, loss_scale=1) is None
    message = guard.after_step(6, skipped=True, loss_scale=1)
    assert message.startswith("fp16 loss scale stuck at its minimum 1 with overflowing gradients for 3 steps")


def test_nan_guard_applies_to_bf16_and_fp32_only():
    records = [{"step": 4, "loss": 2.0}, {"step": 5, "loss": float("nan")}]
    for precision in ("bf16", "fp32"):
        cfg = load_config(TrainConfig, None, [f"train.precision={precision}"])
        assert Guards(cfg.train).check_losses(records).startswith(f"loss is nan at step 5 in {precision}")
    assert Guards(load_config(TrainConfig, None, ["train.precision=fp16"]).train).check_losses(records) is None
