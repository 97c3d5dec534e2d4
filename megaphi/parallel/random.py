"""Tensor-parallel-aware random streams (Megatron-LM's CUDA RNG states tracker, for CPU and GPU).

Two streams matter for dropout under tensor parallelism:
- the default generator, seeded identically on every tensor-parallel rank, drives dropout on
  replicated activations (embeddings, residual branches) so every rank drops the same elements;
- the "model-parallel" stream, seeded differently per tensor-parallel rank, drives dropout on
  sharded activations (a rank's attention heads) so the shards are not dropped in lock-step.
``fork()`` swaps a named stream into the default generators for the duration of a block.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

from megaphi.parallel.state import get_tensor_parallel_rank, get_tensor_parallel_world_size

MODEL_PARALLEL_RNG = "model-parallel-rng"
# Offset between the default seed and the model-parallel seeds, as in Megatron-LM.
_MODEL_PARALLEL_SEED_OFFSET = 2718


def _get_device_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_device_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"])


class RNGStatesTracker:
    """Named generator states that can be forked into the default generators."""

    def __init__(self) -> None:
        self._states: dict[str, dict[str, torch.Tensor]] = {}

    def reset(self) -> None:
        self._states = {}

    def add(self, name: str, seed: int) -> None:
        if name in self._states:
            raise ValueError(f"RNG stream {name!r} already exists; call reset() before re-seeding")
        saved = _get_device_states()
        torch.manual_seed(seed)
        self._states[name] = _get_device_states()
        _set_device_states(saved)

    def get_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """A copy of every stream's state (for checkpoints and activation recomputation)."""
        return {name: {dev: s.clone() for dev, s in st.items()} for name, st in self._states.items()}

    def set_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        self._states = {name: {dev: s.clone() for dev, s in st.items()} for name, st in states.items()}

    def has(self, name: str) -> bool:
        return name in self._states

    @contextlib.contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG) -> Iterator[None]:
        """Run the block on stream ``name``, then restore the default generators.

        Without tensor parallelism and without seeded streams this is a no-op (a notebook user
        gets ordinary dropout); with TP > 1 an unseeded stream is an error, because falling back to
        the default stream would silently drop the same head elements on every rank.
        """
        if name not in self._states:
            if get_tensor_parallel_world_size() == 1:
                yield
                return
            raise RuntimeError(
                f"RNG stream {name!r} is not seeded; call megaphi.parallel.seed_everything(seed) "
                "after megaphi.parallel.initialize() and before running the model"
            )
        saved = _get_device_states()
        _set_device_states(self._states[name])
        try:
            yield
        finally:
            self._states[name] = _get_device_states()
            _set_device_states(saved)


_tracker = RNGStatesTracker()


def get_rng_tracker() -> RNGStatesTracker:
    return _tracker


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch identically on all ranks, and the per-TP-rank model-parallel stream.

    Call after ``megaphi.parallel.initialize`` (the model-parallel seed depends on the TP rank) and
    before building the model: weights are drawn from the default generator, so every TP size
    builds the same network from the same seed.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    _tracker.reset()
    _tracker.add(MODEL_PARALLEL_RNG, seed + _MODEL_PARALLEL_SEED_OFFSET + get_tensor_parallel_rank())
