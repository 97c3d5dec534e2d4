"""Checkpoint bookkeeping: retention, half-written tags, RNG capture."""

import random

import numpy as np
import torch

from megaphi import parallel
from megaphi.train.checkpoint import capture_rng_state, prune, read_latest, restore_rng_state


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
