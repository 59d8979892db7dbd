"""Paired significance tests for per-sample metrics (numpy only; no scipy dependency)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t statistic with ``df`` degrees of freedom."""
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``b - a``: mean difference, t statistic, degrees of freedom, two-sided p-value."""

    n: int
    mean_diff: float
    t: float
    df: int
    p_value: float


def paired_t_test(a: npt.ArrayLike, b: npt.ArrayLike) -> PairedTest:
    """Paired t-test of ``b`` against ``a`` (same samples, same order)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("paired samples must be 1-d arrays of the same length")
    diff = y - x
    n = len(diff)
    if n < 2:
        return PairedTest(n, float(diff.mean()) if n else 0.0, float("nan"), max(n - 1, 0), float("nan"))
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    with np.errstate(divide="ignore", invalid="ignore"):  # sd = 0: t = +-inf, or 0 when mean = 0 too
        t = 0.0 if mean == 0.0 else float(np.float64(mean) / (sd / math.sqrt(n)))
    return PairedTest(n, mean, t, n - 1, t_two_sided_p(t, n - 1))


@dataclass(frozen=True)
class BootstrapTest:
    """A paired bootstrap of the mean of ``b - a``: the observed mean difference, a percentile confidence
    interval and a two-sided p-value (twice the smaller share of resampled means on either side of 0)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    resamples: int


def paired_bootstrap(
    a: npt.ArrayLike, b: npt.ArrayLike, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> BootstrapTest:
    """Paired bootstrap of ``mean(b - a)`` (same samples, same order): samples are drawn with replacement
    ``resamples`` times (seeded), the same draw for both runs, so what varies is which samples count."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("paired samples must be 1-d arrays of the same length")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError("resamples must be >= 1 and confidence in (0, 1)")
    diff = y - x
    n = len(diff)
    if n == 0:
        return BootstrapTest(0, 0.0, float("nan"), float("nan"), float("nan"), resamples)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # blocks of draws keep memory at 1000 x n
        stop = min(resamples, start + 1000)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    p = min(1.0, 2.0 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return BootstrapTest(n, float(diff.mean()), float(low), float(high), p, resamples)


@dataclass(frozen=True)
class McNemarTest:
    """McNemar's test on paired hits: ``only_a`` / ``only_b`` = samples only run a / only run b hits."""

    n: int
    only_a: int
    only_b: int
    statistic: float
    p_value: float
    method: str


def mcnemar(a_hits: npt.ArrayLike, b_hits: npt.ArrayLike, exact_below: int = 25) -> McNemarTest:
    """McNemar's test of paired binary outcomes (e.g. HR@20 per sample). With fewer than ``exact_below``
    discordant pairs: the exact two-sided binomial test (``statistic`` = the smaller discordant count);
    otherwise the chi-square test with continuity correction, ``(|b - c| - 1)^2 / (b + c)``, 1 d.f."""
    x = np.asarray(a_hits).astype(bool)
    y = np.asarray(b_hits).astype(bool)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("paired samples must be 1-d arrays of the same length")
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return McNemarTest(len(x), 0, 0, 0.0, 1.0, "no discordant pairs")
    if discordant < exact_below:
        k = min(only_a, only_b)
        tail = sum(math.comb(discordant, i) for i in range(k + 1)) / 2.0**discordant
        return McNemarTest(len(x), only_a, only_b, float(k), min(1.0, 2.0 * tail), "exact binomial")
    stat = (abs(only_a - only_b) - 1.0) ** 2 / discordant
    return McNemarTest(len(x), only_a, only_b, stat, math.erfc(math.sqrt(stat / 2.0)), "chi-square, continuity")
