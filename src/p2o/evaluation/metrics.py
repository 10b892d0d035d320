"""avg@n and the unbiased pass@k estimator.

For a problem with n sampled completions of which c are correct, the unbiased estimate of the
probability that at least one of k completions (drawn without replacement from the n) is correct is

    pass@k = 1 − C(n−c, k) / C(n, k)

(Chen et al., 2021). The binomials overflow floats for long generations, so it is computed as the
product 1 − Π_{i=n−c+1}^{n} (1 − k/i), which is exact in real arithmetic and stable in floats.
avg@n is the mean fraction of correct completions: the expected accuracy of one sample (= pass@1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct completions out of `n`."""
    if n < 1:
        raise ValueError(f"pass@k: n must be >= 1 (got {n})")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: c must be in [0, n={n}] (got {c})")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k: k must be in [1, n={n}] (got {k})")
    if n - c < k:  # every k-subset contains a correct completion
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over problems; `correct[i]` is the number of correct completions of problem i."""
    if not correct:
        raise ValueError("pass@k: no problems")
    return sum(pass_at_k(n, c, k) for c in correct) / len(correct)


def avg_at_n(correct: Sequence[int], n: int) -> float:
    """avg@n: the mean fraction of correct completions over problems (each problem has n)."""
    if not correct:
        raise ValueError("avg@n: no problems")
    return sum(correct) / (n * len(correct))


def default_ks(n: int) -> list[int]:
    """The k reported by default: powers of two up to n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def parse_ks(text: str | Iterable[int] | None, n: int) -> list[int]:
    """The k to report for `n` samples: `text` ("1,4,16" or a list) clipped to k <= n, or the default."""
    if text is None:
        return default_ks(n)
    if isinstance(text, str):
        try:
            ks = [int(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError as e:
            raise ValueError(f"--pass-k: expected comma-separated integers like 1,4,16 (got {text!r})") from e
    else:
        ks = [int(x) for x in text]
    bad = [k for k in ks if k < 1]
    if bad:
        raise ValueError(f"--pass-k: every k must be >= 1 (got {bad})")
    return sorted({k for k in ks if k <= n}) or [1]
