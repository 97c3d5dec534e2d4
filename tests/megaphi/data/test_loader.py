"""The loader yields int64 [micro_batch, seq_len + 1] batches, prepared ahead in the background."""

import threading
import time

import numpy as np
import pytest
import torch

from megaphi.data.gpt_dataset import GPTDataset
from megaphi.data.loader import Prefetcher, build_data_loader, collate_tokens
from megaphi.data.sampler import DataParallelSampler
from tests.megaphi.data.numbered_corpus import random_lengths, write_numbered_corpus


@pytest.fixture
def dataset(tmp_path):
    prefix = str(tmp_path / "corpus")
    write_numbered_corpus(prefix, random_lengths(100, seed=2))
    return GPTDataset(prefix, seq_len=12, seed=1, num_samples=96)


def test_collate_stacks_windows_into_int64_tokens():
    batch = collate_tokens([np.arange(5, dtype=np.uint16), np.arange(5, 10, dtype=np.uint16)])
    assert batch.dtype == torch.int64 and batch.shape == (2, 5)
    assert batch[1].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="different lengths"):
        collate_tokens([np.arange(5), np.arange(4)])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_yields_this_ranks_samples_in_order(dataset, num_workers):
    kwargs = dict(
        micro_batch_size=2, global_batch_size=8, data_parallel_rank=1, data_parallel_size=2, consumed_samples=16
    )
    expected = [
        torch.from_numpy(np.stack([dataset[i] for i in batch])) for batch in DataParallelSampler(len(dataset), **kwargs)
    ]
    with build_data_loader(dataset, num_workers=num_workers, **kwargs) as loader:
        batches = list(loader)
        assert len(loader) == len(expected)
    assert len(batches) == len(expected) > 0
    for got, want in zip(batches, expected, strict=True):
        assert got.dtype == torch.int64 and got.shape == (2, 13)
        assert torch.equal(got, want)


def test_prefetcher_runs_ahead_of_a_busy_consumer():
    produced = []

    def source():
        for i in range(10):
            produced.append(i)
            yield torch.tensor([i])

    with Prefetcher(source(), depth=3) as loader:
        assert next(loader).item() == 0
        deadline = time.monotonic() + 5
        while len(produced) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # while the trainer works on batch 0, batches 1 to 3 wait in the queue (and 4 is in hand)
        assert 4 <= len(produced) <= 5
        assert [b.item() for b in loader] == list(range(1, 10))


def test_trainer_does_not_wait_when_loading_is_faster_than_a_step():
    def slow_source():
        for i in range(6):
            time.sleep(0.05)
            yield torch.tensor([i])

    loader = Prefetcher(slow_source(), depth=2)
    next(loader)
    first_wait = loader.wait_s
    for _ in loader:
        time.sleep(0.15)  # a training step
    # only the first batch was waited for; sequential loading would add 5 x 50 ms
    assert loader.wait_s - first_wait < 0.1


def test_errors_in_loading_reach_the_trainer_and_close_stops_the_thread():
    def broken():
        yield torch.tensor([1])
        raise ValueError("bad sample 7")

    loader = Prefetcher(broken())
    next(loader)
    with pytest.raises(ValueError, match="bad sample 7"):
        next(loader)

    endless = Prefetcher(iter(lambda: torch.zeros(1), None), depth=2)
    next(endless)
    endless.close()
    assert not any(
        t.name == "megaphi-prefetch" and t is endless._thread and t.is_alive() for t in threading.enumerate()
    )
    with pytest.raises(StopIteration):
        next(endless)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_batches_arrive_on_the_device_from_pinned_memory(dataset):
    with build_data_loader(dataset, micro_batch_size=2, global_batch_size=2, device="cuda") as loader:
        batch = next(loader)
        assert batch.is_cuda and batch.dtype == torch.int64
        torch.testing.assert_close(batch.cpu(), torch.from_numpy(np.stack([dataset[0], dataset[1]])))
    pinned = Prefetcher([torch.zeros(3)], device="cuda")
    assert pinned._queue.get().is_pinned()
    pinned.close()
