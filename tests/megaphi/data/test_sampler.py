"""The data-parallel sampler walks one fixed global order and resumes anywhere, at any DP size."""

import numpy as np
import pytest

from megaphi.data.gpt_dataset import GPTDataset
from megaphi.data.sampler import DataParallelSampler, SamplerConfigError
from tests.megaphi.data.numbered_corpus import random_lengths, write_numbered_corpus

GLOBAL = 24


def steps(total, *, micro, dp, consumed=0, global_batch=GLOBAL):
    """Global sample indices of each optimizer step, as the ranks together see them (rank order kept)."""
    samplers = [
        DataParallelSampler(
            total,
            micro_batch_size=micro,
            global_batch_size=global_batch,
            data_parallel_rank=r,
            data_parallel_size=dp,
            consumed_samples=consumed,
        )
        for r in range(dp)
    ]
    per_rank = [list(s) for s in samplers]
    assert len({len(batches) for batches in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    accumulation = samplers[0].gradient_accumulation_steps
    result = []
    for start in range(0, len(per_rank[0]), accumulation):
        result.append([i for r in range(dp) for batch in per_rank[r][start : start + accumulation] for i in batch])
    return result


def test_each_step_takes_the_next_global_batch_split_over_the_ranks():
    run = steps(100, micro=2, dp=3)
    assert len(run) == 100 // GLOBAL
    for s, step in enumerate(run):
        assert sorted(step) == list(range(s * GLOBAL, (s + 1) * GLOBAL))
    rank1 = list(
        DataParallelSampler(
            100, micro_batch_size=2, global_batch_size=GLOBAL, data_parallel_rank=1, data_parallel_size=3
        )
    )
    # micro-step m hands rank r the r-th block of micro_batch samples among the next micro x dp
    assert rank1[:3] == [[2, 3], [8, 9], [14, 15]]


@pytest.mark.parametrize(
    "dp_before,dp_after,micro_after", [(1, 1, 4), (2, 2, 3), (4, 2, 2), (2, 4, 1), (3, 1, 8), (1, 6, 2)]
)
def test_resume_at_any_step_continues_the_identical_sequence(dp_before, dp_after, micro_after):
    total = 30 * GLOBAL + 5
    reference = steps(total, micro=1, dp=1)
    for resume_step in (0, 1, 7, 29, 30):
        before = steps(total, micro=2, dp=dp_before)[:resume_step]
        after = steps(total, micro=micro_after, dp=dp_after, consumed=resume_step * GLOBAL)
        combined = [sorted(step) for step in before + after]
        assert combined == [sorted(step) for step in reference]
        flat = [i for step in combined for i in step]
        assert len(flat) == len(set(flat))  # nothing repeated, and by the equality above nothing skipped


def test_resumed_loader_sees_the_same_tokens_as_an_uninterrupted_run(tmp_path):
    prefix = str(tmp_path / "corpus")
    write_numbered_corpus(prefix, random_lengths(80, seed=3))
    ds = GPTDataset(prefix, seq_len=8, seed=6, num_samples=10 * GLOBAL)

    def tokens(step_list):
        return [np.stack([ds[i] for i in sorted(step)]) for step in step_list]

    uninterrupted = tokens(steps(len(ds), micro=3, dp=2)[:10])
    resumed = tokens(steps(len(ds), micro=3, dp=2)[:4] + steps(len(ds), micro=2, dp=4, consumed=4 * GLOBAL)[:6])
    assert len(uninterrupted) == 10  # zip(strict=True) below then compares every one of the ten steps
    for a, b in zip(uninterrupted, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_only_whole_steps_are_yielded():
    sampler = DataParallelSampler(
        GLOBAL * 3 - 1, micro_batch_size=4, global_batch_size=GLOBAL, data_parallel_rank=0, data_parallel_size=2
    )
    assert len(sampler) == 2 * sampler.gradient_accumulation_steps == len(list(sampler))
    assert max(i for batch in sampler for i in batch) < 2 * GLOBAL


def test_inconsistent_sizes_and_resume_points_raise_one_clear_error():
    with pytest.raises(SamplerConfigError, match="global_batch_size 24 is not a positive multiple"):
        DataParallelSampler(100, micro_batch_size=5, global_batch_size=24)
    with pytest.raises(SamplerConfigError, match="data_parallel_rank 2"):
        DataParallelSampler(100, micro_batch_size=2, global_batch_size=24, data_parallel_rank=2, data_parallel_size=2)
    with pytest.raises(SamplerConfigError, match="cannot resume at consumed_samples=6"):
        DataParallelSampler(100, micro_batch_size=2, global_batch_size=24, data_parallel_size=4, consumed_samples=6)
    with pytest.raises(SamplerConfigError, match="past the end"):
        DataParallelSampler(100, micro_batch_size=2, global_batch_size=24, consumed_samples=120)
