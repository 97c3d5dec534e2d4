"""Batches for the trainer: collate token windows and prefetch them in the background.

Usage in a training loop::

    loader = build_data_loader(train_ds, micro_batch_size=8, global_batch_size=256,
                               data_parallel_rank=dp_rank, data_parallel_size=dp_size,
                               consumed_samples=consumed, device=device)
    for tokens in loader:                      # int64 [micro_batch, seq_len + 1] on ``device``
        loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    loader.close()

The loader is a :class:`Prefetcher`: a background thread reads and collates the next batches
(from a DataLoader, optionally with worker processes) and pins them, so the trainer's ``next()``
finds a batch ready; on CUDA the host-to-device copy is issued asynchronously.
``loader.wait_s`` is the total time the trainer spent waiting for data (worth logging: it should
stay near zero).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, Sized

import numpy as np
import torch
import torch.utils.data

from megaphi.data.sampler import DataParallelSampler

if TYPE_CHECKING:
    from megaphi.data.blended import BlendedDataset
    from megaphi.data.gpt_dataset import GPTDataset

_END = object()


def collate_tokens(samples: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack equal-length token windows into an int64 tensor [batch, seq_len + 1]."""
    lengths = {len(s) for s in samples}
    if len(lengths) != 1:
        raise ValueError(
            f"cannot batch token windows of different lengths {sorted(lengths)}; all samples need seq_len + 1 tokens"
        )
    return torch.from_numpy(np.stack(samples).astype(np.int64, copy=False))


class Prefetcher:
    """Iterate ``source`` in a background thread, ``depth`` batches ahead of the consumer.

    Tensors are pinned and moved to ``device`` (non-blocking) when it is a CUDA device. An
    exception in the source is re-raised in the consumer. Call :meth:`close` (or use ``with``) to
    stop early.
    """

    def __init__(self, source: Iterable[Any], *, depth: int = 2, device: str | torch.device | None = None):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self.device = torch.device(device) if device is not None else None
        self._pin = self.device is not None and self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._source = source
        self.wait_s = 0.0
        self._finished = False
        self._thread = threading.Thread(target=self._produce, name="megaphi-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for batch in self._source:
                if self._pin:
                    batch = _map_tensors(batch, lambda t: t.pin_memory())
                if not self._put(batch):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)
            return
        self._put(_END)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __len__(self) -> int:
        """Batches the source yields in total (when it has a length)."""
        if not isinstance(self._source, Sized):
            raise TypeError(f"{self._source!r} has no length, so neither has its prefetcher")
        return len(self._source)

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        start = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - start
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if self.device is not None:
            item = _map_tensors(item, lambda t: t.to(self.device, non_blocking=True))
        return item

    def close(self) -> None:
        self._stop.set()
        self._finished = True
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: _map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(v, fn) for v in batch)
    return batch


def build_data_loader(
    dataset: GPTDataset | BlendedDataset,
    *,
    micro_batch_size: int,
    global_batch_size: int,
    data_parallel_rank: int = 0,
    data_parallel_size: int = 1,
    consumed_samples: int = 0,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    prefetch_depth: int = 2,
) -> Prefetcher:
    """This rank's micro-batches (int64 [micro_batch, seq_len + 1]) from ``consumed_samples`` on.

    ``len(loader)`` batches: this rank's share of every whole optimizer step left in the dataset.
    """
    sampler = DataParallelSampler(
        len(dataset),
        micro_batch_size=micro_batch_size,
        global_batch_size=global_batch_size,
        data_parallel_rank=data_parallel_rank,
        data_parallel_size=data_parallel_size,
        consumed_samples=consumed_samples,
    )
    data_loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_tokens,
        num_workers=num_workers,
        # Its own generator: starting an iterator draws a worker base seed, which from the global
        # generator would shift the training RNG streams (dropout) and break exact resumption.
        generator=torch.Generator().manual_seed(0),
    )
    return Prefetcher(data_loader, depth=prefetch_depth, device=device)
