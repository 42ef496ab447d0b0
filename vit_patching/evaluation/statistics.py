"""Student-t intervals for per-image scores: one home for the benchmark, ``select_window`` and the scripts.

Example:
    >>> round(t_quantile(0.975, 63), 4)
    1.9983
    >>> [round(v, 6) for v in mean_ci([1.0, 2.0, 3.0])]   # t(0.975, 2) * 1 / sqrt(3)
    [2.0, 2.484138, 3]
    >>> paired_ci([2.0, 3.0, 5.0], [1.0, 1.0, 2.0])[0]
    2.0
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from vit_patching.checks import check_fraction, check_positive_int

__all__ = ["holm", "mean_ci", "paired_ci", "paired_t_test", "t_quantile"]


def _t_central_mass(x: float, df: int) -> float:
    """``P(|T| < x)`` for Student's t with integer ``df`` (closed form, Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(x / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * math.cos(theta) * total)


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom.

    Exact (bisection on the closed-form CDF) up to ``df = 200``; above, the Cornish-Fisher expansion (error < 1e-9).

    Example:
        >>> round(t_quantile(0.975, 63), 4)
        1.9983
    """
    if not 0 < p < 1:
        raise ValueError(f"p: expected a probability in (0, 1), got {p!r}")
    check_positive_int(df, "df")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if df <= 200:
        want, lo, hi = 2 * p - 1, 0.0, 1.0
        while _t_central_mass(hi, df) < want:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            if _t_central_mass(mid, df) < want:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-13 * max(1.0, hi):
                break
        return (lo + hi) / 2
    z = NormalDist().inv_cdf(p)
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(t / df ** (k + 1) for k, t in enumerate(terms))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half-width of the Student-t interval, n)`` over the finite values (half-width NaN if n < 2);
    ``level`` (the coverage) in (0, 1)."""
    check_fraction(level, "level", open_low=True, open_high=True)
    v = [x for x in values if math.isfinite(x)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = math.fsum(v) / n
    if n < 2:
        return mean, float("nan"), n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1))
    return mean, t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n), n


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """``mean_ci`` of the per-item differences ``a - b`` (items where both are finite).

    Args:
        a, b: Scores of two settings on the same items, in the same order.
        level: Coverage of the interval, in (0, 1).

    Returns:
        ``(mean difference, half-width, n)``.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, or ``level`` is not in (0, 1).

    Example:
        >>> paired_ci([1.0, 2.0], [1.0, 1.0])[0]
        0.5
    """
    check_fraction(level, "level", open_low=True, open_high=True)
    if len(a) != len(b):
        raise ValueError(f"b: expected as many values as a ({len(a)}), got {len(b)}")
    diffs = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    return mean_ci(diffs, level)


def paired_t_test(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Two-sided paired Student-t test of ``a - b`` (items where both are finite).

    Returns:
        ``(mean difference, half-width of its interval at level, p-value, n)``; the p-value is NaN with fewer
        than 2 items, 1 when every difference is 0, 0 when they are equal and non-zero.

    Example:
        >>> d, hw, p, n = paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])   # t = 2 sqrt(3), df = 2
        >>> round(p, 6)                                                      # 1 - sqrt(12 / 14)
        0.07418
    """
    mean, hw, n = paired_ci(a, b, level)
    if n < 2:
        return mean, hw, float("nan"), n
    diffs = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in diffs) / (n - 1))
    if sd == 0:
        return mean, hw, 1.0 if mean == 0 else 0.0, n
    t = abs(mean) / (sd / math.sqrt(n))
    return mean, hw, max(0.0, 1.0 - _t_central_mass(t, n - 1)), n


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): the ``k``-th smallest p (1-based) times
    ``m - k + 1``, made non-decreasing in that order and capped at 1. Reject at ``alpha`` where the adjusted
    p-value is <= ``alpha``: the family-wise error rate over the ``m`` tests is then at most ``alpha``.

    Example:
        >>> [round(p, 6) for p in holm([0.01, 0.04, 0.03, 0.005])]   # sorted: 0.005*4, 0.01*3, 0.03*2, 0.04*1
        [0.03, 0.06, 0.06, 0.02]
    """
    ps = [float(p) for p in p_values]
    for p in ps:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values: expected probabilities in [0, 1], got {p!r}")
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out
