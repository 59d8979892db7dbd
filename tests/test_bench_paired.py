"""The paired evaluation benchmark's interval for the median of per-round ratios."""

from __future__ import annotations

import math
import random

from benchmarks.speed import eval_paired as paired


def coverage(n: int, lo_rank: int, hi_rank: int) -> float:
    """P(X_(lo) <= median < X_(hi)) for n draws of a continuous variable: P(lo <= Binomial(n, 1/2) < hi)."""
    return sum(math.comb(n, k) for k in range(lo_rank, hi_rank)) / 2**n


def test_median_interval_is_two_order_statistics_with_95_percent_coverage() -> None:
    rng = random.Random(0)
    for n in (20, 60, 180):
        values = [rng.lognormvariate(0, 1) for _ in range(n)]
        lo, hi = paired.median_interval(values)
        ordered = sorted(values)
        lo_rank, hi_rank = ordered.index(lo) + 1, ordered.index(hi) + 1
        assert lo_rank < n / 2 < hi_rank
        assert 0.95 <= coverage(n, lo_rank, hi_rank) < 0.99


def test_median_interval_of_one_value_is_that_value() -> None:
    assert paired.median_interval([0.2]) == (0.2, 0.2)
