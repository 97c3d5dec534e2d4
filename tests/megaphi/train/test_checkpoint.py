"""Checkpoint bookkeeping: retention, half-written tags, RNG capture; and the divergence guards."""
import random

import numpy as np
import torch

from megaphi import parallel
from megaphi.config import TrainConfig, load_config
from megaphi.train.checkpoint import capture_rng_state, prune, read_latest, restore_rng_state
from megaphi.train.trainer import _Guards


def make_tags(root, *steps):
    for s in steps:
        (root / f"step{s}").mkdir(parents=True)
        (root / f"step{s}" / "mp_rank_00_model_states.pt").write_bytes(b"x")


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    make_tags(tmp_path, 10, 20, 30, 40)
    (tmp_path / "latest").write_text("step40")
    removed = prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["step10", "step20"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step30", "step40"]


def test_prune_removes_tags_newer_than_latest_left_by_a_kill_mid_save(tmp_path):
    make_tags(tmp_path, 10, 20, 30)
    (tmp_path / "latest").write_text("step20")  # step30 was being written when the job died
    prune(tmp_path, keep_last=5)
    assert read_latest(tmp_path) == "step20"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step10", "step20"]


def test_keep_last_zero_keeps_every_complete_checkpoint(tmp_path):
    make_tags(tmp_path, 1, 2, 3)
    (tmp_path / "latest").write_text("step3")
    assert prune(tmp_path, keep_last=0) == []


def test_rng_state_round_trip_replays_every_stream():
    parallel.seed_everything(7)

    def draw():
        with parallel.get_rng_tracker().fork():
            tracked = torch.rand(2)
        return random.random(), np.random.rand(), torch.rand(2), tracked

    state = capture_rng_state()
    first = draw()
    restore_rng_state(state)
    second = draw()
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    assert not torch.equal(first[2], first[3])  # the tensor-parallel stream is a different stream


def test_fp16_guard_stops_after_the_configured_overflows_at_the_minimum_scale():
    cfg = load_config(TrainConfig, None, ["train.precision=fp16", "train.min_loss_scale=1",
                                          "train.max_steps_at_min_loss_scale=3"])
    guard = _Guards(cfg)
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
        assert _Guards(cfg).check_losses(records).startswith(f"loss is nan at step 5 in {precision}")
    assert _Guards(load_config(TrainConfig, None, ["train.precision=fp16"])).check_losses(records) is None
