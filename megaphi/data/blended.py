"""Several datasets mixed by weight, with exact per-dataset sample counts.

A blend of ``num_samples`` samples takes exactly ``counts[d]`` samples from dataset ``d``, where the
counts are the weights' shares of ``num_samples`` rounded by largest remainder (so they add up to
``num_samples``), and it takes them in order: the ``j``-th sample drawn from dataset ``d`` is
``datasets[d][j]``. The datasets are interleaved evenly: the ``j``-th draw from ``d`` is placed at
its ideal time ``(j + 1/2) / counts[d]``, so every prefix of the blend holds each dataset in
proportion to its weight, within a sample or two (Megatron's greedy blending has the same
property; this one is a stable merge of presorted runs, linear-time in numpy).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, Union

import numpy as np
import torch.utils.data

from megaphi.data.gpt_dataset import DatasetConfigError

Numbers = Union[Sequence[float], np.ndarray]  # one number per dataset


class Samples(Protocol):
    """What a blend draws from: a map-style dataset that knows its length."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Any: ...


def normalize_weights(weights: Numbers) -> np.ndarray:
    """Weights as fractions summing to one; they must be finite, non-negative, not all zero."""
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise DatasetConfigError(f"blend weights must be a non-empty list of numbers, got {weights!r}")
    if not np.all(np.isfinite(array)) or np.any(array < 0) or array.sum() <= 0:
        raise DatasetConfigError(f"blend weights must be finite, non-negative and not all zero, got {list(weights)}")
    return array / array.sum()


def blend_counts(weights: Numbers, num_samples: int) -> np.ndarray:
    """Samples per dataset: ``weights * num_samples`` rounded by largest remainder (exact total)."""
    shares = normalize_weights(weights) * num_samples
    counts = np.floor(shares).astype(np.int64)
    short = num_samples - int(counts.sum())
    # hand the leftover samples to the largest fractional parts (ties: the earlier dataset)
    counts[np.argsort(-(shares - counts), kind="stable")[:short]] += 1
    return counts


def build_blending_indices(samples_per_dataset: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index) for a blend with exactly ``counts[d]`` samples of ``d``.

    Sample ``i`` of the blend is sample ``dataset_sample_index[i]`` of dataset ``dataset_index[i]``.
    """
    counts = np.asarray(samples_per_dataset, dtype=np.int64)
    dataset_sample_index = np.concatenate([np.arange(c, dtype=np.int64) for c in counts])
    owners = np.repeat(np.arange(len(counts), dtype=np.int16 if len(counts) < 2**15 else np.int64), counts)
    ideal_time = (dataset_sample_index + 0.5) / np.repeat(np.maximum(counts, 1), counts)
    # each dataset's times are already sorted, so a stable sort merges runs; ties go to the lower dataset
    order = np.argsort(ideal_time, kind="stable")
    return owners[order], dataset_sample_index[order]


class BlendedDataset(torch.utils.data.Dataset):
    """``num_samples`` samples drawn from ``datasets`` in proportion to ``weights``.

    Every dataset must hold at least its share (``blend_counts(weights, num_samples)[d]`` samples);
    build each with ``num_samples=`` that count (see :func:`megaphi.data.builder.build_train_valid_datasets`).
    ``dataset[i]`` is whatever the chosen dataset returns (an int64 token window for GPT datasets).
    """

    def __init__(self, datasets: Sequence[Samples], weights: Numbers, num_samples: int) -> None:
        if len(datasets) != len(weights):
            raise DatasetConfigError(
                f"{len(datasets)} datasets but {len(weights)} blend weights; give one weight per dataset"
            )
        if num_samples < 0:
            raise DatasetConfigError(f"num_samples must be non-negative, got {num_samples}")
        self.datasets = list(datasets)
        self.weights = normalize_weights(weights)
        self.counts = blend_counts(self.weights, num_samples)
        for d, (dataset, count) in enumerate(zip(self.datasets, self.counts)):
            if len(dataset) < count:
                raise DatasetConfigError(
                    f"blend dataset {d} ({dataset!r}) has {len(dataset)} samples but its weight needs {count}; "
                    "build it with num_samples >= its share"
                )
        self.dataset_index, self.dataset_sample_index = build_blending_indices(self.counts)

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for a blend of {len(self)} samples")
        return self.datasets[self.dataset_index[i]][int(self.dataset_sample_index[i])]

    def __repr__(self) -> str:
        parts = ", ".join(f"{w:.3g}: {c} from {d!r}" for w, c, d in zip(self.weights, self.counts, self.datasets))
        return f"BlendedDataset({len(self)} samples; {parts})"


def max_prefix_deviation(dataset_index: np.ndarray, weights: Numbers) -> float:
    """Largest ``|count_d(first n samples) - n * weight_d|`` over all prefixes and datasets."""
    n = np.arange(1, len(dataset_index) + 1)
    worst = 0.0
    for d, w in enumerate(normalize_weights(weights)):
        worst = max(worst, float(np.abs(np.cumsum(dataset_index == d) - n * w).max(initial=0.0)))
    return worst
