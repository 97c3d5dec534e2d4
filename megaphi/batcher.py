"""The generation batcher behind megaphi.serve: requests that can share a decoding pass run as one batch.

One model worker thread takes the oldest queued request plus every queued request that can share
its pass (same temperature and top_p, greedy requests always can; within ``max_batch_rows`` rows and
the model's context) and runs them as one left-padded batch through a :class:`megaphi.backends.Backend`,
each row with its own max_tokens and stop sequences. A seeded request's rows each draw from their
own random stream (seeded from the seed and the choice's index), so the same seed gives the same
text whatever else is in flight. The HTTP layer (megaphi.serve) parses requests into
:class:`Sampling` and awaits :meth:`Batcher.submit`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from megaphi.backends import Backend
from megaphi.generate import cut_at_stop, sequence_seed

log = logging.getLogger("megaphi.serve")


@dataclass
class Sampling:
    """How one request samples: its rows share a pass with any request of the same ``batch_key``."""

    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    seed: int | None

    def batch_key(self) -> tuple:
        if self.temperature == 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p)


@dataclass
class Job:
    """A queued request: its prompts, each sampled ``sampling.n`` times, and the future awaiting them."""

    prompts: list[list[int]]  # token ids, one list per prompt of the request
    sampling: Sampling
    future: asyncio.Future
    rows: int = 0

    def __post_init__(self) -> None:
        self.rows = len(self.prompts) * self.sampling.n


@dataclass
class Completion:
    """One generated choice: the text (cut at a stop), why it ended ("stop" or "length"), tokens drawn."""

    text: str
    finish_reason: str
    tokens: int


@dataclass
class BatchStats:
    batches: int = 0
    requests_per_batch: deque = field(default_factory=lambda: deque(maxlen=1000))


class Batcher:
    """Queues requests and runs compatible ones together on a single model thread."""

    def __init__(self, backend: Backend, *, max_batch_rows: int = 16, window_s: float = 0.005):
        self.backend, self.tokenizer = backend, backend.tokenizer
        self.max_batch_rows, self.window_s = max_batch_rows, window_s
        self.context = backend.context
        self.pending: deque[Job] = deque()
        self.wakeup = asyncio.Event()
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="megaphi-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        job = Job(prompts, sampling, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self.wakeup.set()
        return await job.future

    def _take_batch(self) -> list[Job]:
        """The oldest job plus every queued job that fits its pass (key, rows, context length)."""
        first = self.pending.popleft()
        batch, rows = [first], first.rows
        longest = max(len(p) for p in first.prompts)
        steps = first.sampling.max_tokens
        for job in list(self.pending):
            if job.sampling.batch_key() != first.sampling.batch_key() or rows + job.rows > self.max_batch_rows:
                continue
            job_longest = max(longest, *(len(p) for p in job.prompts))
            job_steps = max(steps, job.sampling.max_tokens)
            if job_longest + job_steps > self.context:  # every row's positions must stay in range
                continue
            self.pending.remove(job)
            batch.append(job)
            rows, longest, steps = rows + job.rows, job_longest, job_steps
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            await asyncio.sleep(self.window_s)  # let requests that arrive together share the pass
            while self.pending:
                batch = self._take_batch()
                self.stats.batches += 1
                self.stats.requests_per_batch.append(len(batch))
                try:
                    results = await loop.run_in_executor(self._executor, self._run, batch)
                except Exception as exc:  # noqa: BLE001 - reported to each waiting request as a 500
                    log.exception("generation failed")
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                for job, result in zip(batch, results):
                    if not job.future.done():  # the client may have gone away
                        job.future.set_result(result)
            self.wakeup.clear()

    def _run(self, batch: list[Job]) -> list[list[list[Completion]]]:
        rows = [(job, ids) for job in batch for ids in job.prompts for _ in range(job.sampling.n)]
        row_max = [job.sampling.max_tokens for job, _ in rows]
        row_stop = [job.sampling.stop for job, _ in rows]

        def is_done(row: int, ids: list[int]) -> bool:
            return len(ids) >= row_max[row] or (
                bool(row_stop[row]) and cut_at_stop(self.tokenizer.decode(ids), row_stop[row])[1]
            )

        # Choice j of a prompt draws from the stream of (seed, j), as megaphi.generate.generate does.
        seeds = [
            None if job.sampling.seed is None else sequence_seed(job.sampling.seed, j)
            for job in batch
            for _ in job.prompts
            for j in range(job.sampling.n)
        ]
        first = batch[0].sampling
        tokens = self.backend.generate(
            [ids for _, ids in rows],
            max_new_tokens=max(row_max),
            temperature=first.temperature,
            top_p=first.top_p,
            seeds=seeds if any(s is not None for s in seeds) else None,
            is_done=is_done,
        )
        completions = []
        for row, ids in enumerate(tokens):
            text, stopped = cut_at_stop(self.tokenizer.decode(ids), row_stop[row])
            # Fewer tokens than allowed means the model ended the text itself (EOS) or hit a stop.
            reason = "stop" if stopped or len(ids) < row_max[row] else "length"
            completions.append(Completion(text, reason, len(ids)))
        # Regroup rows per job and per prompt: n completions for each prompt.
        results, at = [], 0
        for job in batch:
            n = job.sampling.n
            results.append([completions[at + i * n : at + (i + 1) * n] for i in range(len(job.prompts))])
            at += job.rows
        return results
