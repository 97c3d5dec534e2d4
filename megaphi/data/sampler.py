"""Data-parallel batch sampler that resumes exactly from a consumed-sample count.

The dataset already defines the (shuffled) global order, so sampling is just walking it: optimizer
step ``s`` trains on samples ``[s * global_batch, (s + 1) * global_batch)``. Each step is
``global_batch / (micro_batch * dp)`` micro-steps; micro-step ``m`` takes the next
``micro_batch * dp`` samples and data-parallel rank ``r`` gets the ``r``-th block of ``micro_batch``
of them (Megatron's pretraining sampler layout).

Resuming needs only ``consumed_samples`` (stored in the checkpoint): training continues with global
sample ``consumed_samples``, whatever the data-parallel size is now, so no sample is repeated or
skipped even when a run restarts on a different number of GPUs (with the same global batch, the
same samples make up each step; only their assignment to ranks changes).
"""

from __future__ import annotations

from typing import Iterator

from megaphi.common.errors import UserError


class SamplerConfigError(UserError):
    """Batch sizes, ranks or a resume point that do not fit together; the message says which."""


class DataParallelSampler:
    """Batch sampler (for ``DataLoader(batch_sampler=...)``) yielding this rank's micro-batches.

    Args:
        total_samples: length of the dataset (global order ``0 .. total_samples - 1``).
        micro_batch_size: samples per micro-batch on one rank.
        global_batch_size: samples per optimizer step over all ranks; a multiple of
            ``micro_batch_size * data_parallel_size``.
        data_parallel_rank, data_parallel_size: this rank's place in the data-parallel group.
        consumed_samples: samples already trained on (0 for a fresh run); must be a multiple of
            ``micro_batch_size * data_parallel_size``.

    Only whole optimizer steps are yielded: iteration stops when fewer than ``global_batch_size``
    samples remain. ``len()`` is the number of micro-batches this rank will get.
    """

    def __init__(
        self,
        total_samples: int,
        *,
        micro_batch_size: int,
        global_batch_size: int,
        data_parallel_rank: int = 0,
        data_parallel_size: int = 1,
        consumed_samples: int = 0,
    ):
        if micro_batch_size < 1 or data_parallel_size < 1:
            raise SamplerConfigError(
                f"micro_batch_size ({micro_batch_size}) and data_parallel_size ({data_parallel_size}) must be positive"
            )
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise SamplerConfigError(f"data_parallel_rank {data_parallel_rank} is outside [0, {data_parallel_size})")
        self.samples_per_micro_step = micro_batch_size * data_parallel_size
        if global_batch_size < 1 or global_batch_size % self.samples_per_micro_step:
            raise SamplerConfigError(
                f"global_batch_size {global_batch_size} is not a positive multiple of micro_batch_size x data_parallel_size "
                f"= {micro_batch_size} x {data_parallel_size}; change one of them"
            )
        if consumed_samples < 0 or consumed_samples % self.samples_per_micro_step:
            raise SamplerConfigError(
                f"cannot resume at consumed_samples={consumed_samples}: it must be a non-negative multiple of "
                f"micro_batch_size x data_parallel_size = {self.samples_per_micro_step} (resume at a step boundary)"
            )
        if consumed_samples > total_samples:
            raise SamplerConfigError(
                f"consumed_samples={consumed_samples} is past the end of the dataset ({total_samples} samples); "
                "build the dataset for more samples (train steps x global batch)"
            )
        self.total_samples = total_samples
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.consumed_samples = consumed_samples

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.global_batch_size // self.samples_per_micro_step

    @property
    def end(self) -> int:
        """Global position after the last whole step that fits in the dataset."""
        steps = (self.total_samples - self.consumed_samples) // self.global_batch_size
        return self.consumed_samples + steps * self.global_batch_size

    def __len__(self) -> int:
        return (self.end - self.consumed_samples) // self.samples_per_micro_step

    def __iter__(self) -> Iterator[list[int]]:
        first = self.data_parallel_rank * self.micro_batch_size
        for start in range(self.consumed_samples, self.end, self.samples_per_micro_step):
            yield list(range(start + first, start + first + self.micro_batch_size))
