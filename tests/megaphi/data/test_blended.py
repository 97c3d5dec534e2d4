"""Blending takes exact per-dataset sample counts, evenly interleaved, each dataset read in order."""

import numpy as np
import pytest

from megaphi.data.blended import (
    BlendedDataset,
    blend_counts,
    build_blending_indices,
    max_prefix_deviation,
)
from megaphi.data.gpt_dataset import DatasetConfigError, GPTDataset
from tests.megaphi.data.numbered_corpus import random_lengths, write_numbered_corpus

WEIGHTS = [[0.7, 0.3], [1, 1, 1], [0.5, 0.3, 0.2], [0.01, 0.99], [0.45, 0.45, 0.05, 0.05], [3, 0, 1]]


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("num_samples", [1, 7, 1000, 12345])
def test_counts_are_the_weight_shares_rounded_to_an_exact_total(weights, num_samples):
    counts = blend_counts(weights, num_samples)
    shares = np.asarray(weights, dtype=float) / sum(weights) * num_samples
    assert counts.sum() == num_samples
    assert np.all(np.abs(counts - shares) < 1)
    assert np.all(counts[np.asarray(weights) == 0] == 0)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_every_prefix_of_the_blend_holds_each_dataset_in_its_weight(weights):
    counts = blend_counts(weights, 12345)
    dataset_index, dataset_sample_index = build_blending_indices(counts)
    np.testing.assert_array_equal(np.bincount(dataset_index, minlength=len(weights)), counts)
    # within about one sample of the ideal share at every point of training
    assert max_prefix_deviation(dataset_index, weights) < 1.5
    for d, count in enumerate(counts):
        # each dataset is drawn in its own (already shuffled) order: 0, 1, 2, ...
        np.testing.assert_array_equal(dataset_sample_index[dataset_index == d], np.arange(count))


@pytest.mark.slow
def test_blend_is_as_even_as_megatron_greedy_blending():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import helpers
    weights = np.array([0.45, 0.45, 0.05, 0.05])
    n = 20000
    megatron_index = np.zeros(n, dtype=np.int16)
    helpers.build_blending_indices(megatron_index, np.zeros(n, dtype=np.int64), weights, len(weights), n, False)
    ours, _ = build_blending_indices(blend_counts(weights, n))
    assert max_prefix_deviation(ours, weights) <= max_prefix_deviation(megatron_index, weights) + 0.5


def test_blended_dataset_returns_the_chosen_datasets_samples(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_numbered_corpus(a, random_lengths(40, seed=1))
    write_numbered_corpus(b, random_lengths(60, seed=2))
    counts = blend_counts([0.25, 0.75], 300)
    parts = [GPTDataset(a, seq_len=8, num_samples=int(counts[0])), GPTDataset(b, seq_len=8, num_samples=int(counts[1]))]
    blend = BlendedDataset(parts, [0.25, 0.75], 300)
    assert len(blend) == 300
    seen = [0, 0]
    for i in range(len(blend)):
        d = int(blend.dataset_index[i])
        np.testing.assert_array_equal(blend[i], parts[d][seen[d]])
        seen[d] += 1
    assert seen == list(counts)


def test_bad_blends_raise_one_clear_error(tmp_path):
    prefix = str(tmp_path / "a")
    write_numbered_corpus(prefix, random_lengths(10, seed=1))
    small = GPTDataset(prefix, seq_len=8)
    with pytest.raises(DatasetConfigError, match="one weight per dataset"):
        BlendedDataset([small, small], [1.0], 10)
    with pytest.raises(DatasetConfigError, match="non-negative"):
        BlendedDataset([small, small], [1.0, -1.0], 10)
    with pytest.raises(DatasetConfigError, match="not all zero"):
        blend_counts([0, 0], 10)
    with pytest.raises(DatasetConfigError, match=r"needs \d+"):
        BlendedDataset([small, small], [0.5, 0.5], 4 * len(small))
