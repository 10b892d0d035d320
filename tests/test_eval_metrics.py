"""pass@k and avg@n: the unbiased estimator against brute-force enumeration of k-subsets."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction
from math import comb

import pytest

from p2o.evaluation.metrics import avg_at_n, default_ks, mean_pass_at_k, parse_ks, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The fraction of k-subsets of n completions (c of them correct) holding at least one correct one."""
    completions = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(completions[i] for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


def test_pass_at_k_equals_brute_force_on_random_small_cases():
    rng = random.Random(0)
    cases = {(n, c, k) for n in range(1, 11) for c in (0, n) for k in range(1, n + 1)}
    while len(cases) < 300:
        n = rng.randint(1, 12)
        cases.add((n, rng.randint(0, n), rng.randint(1, n)))
    for n, c, k in sorted(cases):
        expected = brute_force_pass_at_k(n, c, k)
        assert pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12), (n, c, k)
        # ... and the closed form it stands for.
        assert float(expected) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 1e600 is far beyond float range; the product form stays finite and in [0, 1].
    exact = 1 - Fraction(comb(1997, 1000), comb(2000, 1000))  # exact in rationals
    assert pass_at_k(2000, 3, 1000) == pytest.approx(float(exact), rel=1e-12)
    assert 0 < pass_at_k(5000, 1, 1) < 1e-3


def test_pass_at_1_is_the_fraction_correct_and_avg_at_n_is_mean_pass_at_1():
    correct = [0, 3, 16, 7]
    assert avg_at_n(correct, 16) == pytest.approx(sum(correct) / 64)
    assert mean_pass_at_k(correct, 16, 1) == pytest.approx(avg_at_n(correct, 16))
    assert mean_pass_at_k(correct, 16, 16) == pytest.approx(3 / 4)  # any correct among all 16


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


def test_reported_ks():
    assert default_ks(1) == [1]
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert parse_ks("16,1,4,64", 16) == [1, 4, 16]  # k > n dropped
    assert parse_ks(None, 6) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="--pass-k"):
        parse_ks("1,x", 4)
    with pytest.raises(ValueError, match="--pass-k"):
        parse_ks("0,2", 4)
