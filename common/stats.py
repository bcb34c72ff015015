"""Statistics for comparing arms of an experiment, in plain float64 Python (no scipy at run time).

    from common.stats import mean_ci, welch_test
    mean_ci([0.981, 0.979, 0.983])                       # mean, std and 95% CI of the mean
    welch_test([0.981, 0.979, 0.983], [0.975, 0.977])    # b - a, Welch df, 95% CI, two-sided p

The Student t CDF comes from the regularized incomplete beta function,

    P(T <= t) = 1 - I_x(df/2, 1/2) / 2   for t >= 0,   with x = df / (df + t^2),

evaluated with a continued fraction (modified Lentz), and its inverse from bisection on the CDF.
tests/test_stats.py checks both against scipy.stats to 1e-10 for df from 0.5 to 1e4.

Degenerate cases return None fields rather than raising or dividing by zero:
- fewer than 2 values: a mean, but no standard deviation, no interval and no test;
- zero variance in both samples: equal means give p = 1 and the interval [0, 0]; different means
  give no p-value and no interval, because the t statistic is infinite. `note` names the case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

_EPS = 1e-16  # relative step at which the continued fraction counts as converged
_TINY = 1e-300  # stand-in for a zero denominator in the Lentz recurrence
_MAX_TERMS = 100_000


def mean(values: Sequence[float]) -> float:
    if len(values) == 0:
        raise ValueError("mean of an empty sample is undefined")
    return math.fsum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """Compute the sample standard deviation (ddof=1) of at least 2 values."""
    if len(values) < 2:
        raise ValueError(f"sample standard deviation needs at least 2 values, got {len(values)}")
    center = mean(values)
    return math.sqrt(math.fsum((v - center) ** 2 for v in values) / (len(values) - 1))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Evaluate the continued fraction of I_x(a, b) without its prefactor, which converges fast for x < (a + 1) / (a + b + 2).

    The terms are d(2m+1) = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)) and d(2m) = m(b-m) x / ((a+2m-1)(a+2m)),
    and the fraction 1 / (1 + d1 / (1 + d2 / (1 + ...))) is evaluated front to back with Lentz's method.
    """
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _MAX_TERMS):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPS:
            return result
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float, one_minus_x: float | None = None) -> float:
    """Compute the regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1.

    Pass one_minus_x when it is known more exactly than 1 - x (x close to 1 loses digits otherwise).
    """
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    if x == 0.0:
        return 0.0
    if y == 0.0:
        return 1.0
    # NOTE: lgamma cancellation limits the prefactor to about 1e-9 relative once a or b reaches 5e5.
    log_prefactor = a * math.log(x) + b * math.log(y) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    prefactor = math.exp(log_prefactor)
    # The fraction converges quickly only below the mean of the Beta(a, b) distribution (roughly);
    # above it the symmetry I_x(a, b) = 1 - I_(1-x)(b, a) swaps to the fast side.
    if x < (a + 1.0) / (a + b + 2.0):
        return prefactor * _beta_continued_fraction(a, b, x) / a
    return 1.0 - prefactor * _beta_continued_fraction(b, a, y) / b


def _check_df(df: float) -> None:
    if not (df > 0 and math.isfinite(df)):
        raise ValueError(f"Student t needs finite degrees of freedom > 0, got {df}")


def t_sf(t: float, df: float) -> float:
    """Compute the upper tail P(T > t) of Student's t with df degrees of freedom (df may be fractional)."""
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    t2 = t * t
    # Both x and 1 - x are formed directly, so neither tail loses digits to cancellation.
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """Compute P(T <= t) of Student's t with df degrees of freedom."""
    return t_sf(-t, df)


def t_ppf(q: float, df: float) -> float:
    """Find the quantile of Student's t, the t with P(T <= t) = q, by bisection on the tail probability."""
    _check_df(df)
    if not 0.0 < q < 1.0:
        raise ValueError(f"t quantile needs 0 < q < 1, got {q}")
    if q == 0.5:
        return 0.0
    # The smaller tail is searched, because 1 - q for a q near 0 would lose its low digits.
    if q < 0.5:
        return -_t_isf(q, df)
    return _t_isf(1.0 - q, df)


def _t_isf(tail: float, df: float) -> float:
    """Find the t >= 0 with P(T > t) = tail, for 0 < tail < 0.5."""
    low, high = 0.0, 1.0
    while t_sf(high, df) > tail:
        low, high = high, 2.0 * high
    # Halve [low, high] until the midpoint equals an end, which is the float64 resolution of t.
    while True:
        middle = 0.5 * (low + high)
        if middle <= low or middle >= high:
            return middle
        if t_sf(middle, df) > tail:
            low = middle
        else:
            high = middle


@dataclass
class MeanCI:
    """Mean of a sample with its standard deviation and confidence interval (None when n < 2)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    level: float


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
    """Compute the mean and the t interval mean +- t_((1+level)/2, n-1) * s / sqrt(n), with no interval when n < 2."""
    n = len(values)
    center = mean(values)
    if n < 2:
        return MeanCI(n=n, mean=center, std=None, low=None, high=None, level=level)
    s = std(values)
    half = t_ppf(0.5 + level / 2.0, n - 1) * s / math.sqrt(n)
    return MeanCI(n=n, mean=center, std=s, low=center - half, high=center + half, level=level)


@dataclass
class WelchResult:
    """Result of Welch's two-sample t-test of mean(b) - mean(a). Fields that a degenerate case leaves undefined are None."""

    diff: float
    n_a: int
    n_b: int
    t: float | None
    df: float | None
    low: float | None
    high: float | None
    p: float | None
    level: float
    note: str  # "" for a regular test, otherwise why some fields are None or fixed


def welch_test(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> WelchResult:
    """Test mean(b) - mean(a) with Welch's unequal-variance t-test, returning its CI and two-sided p-value.

    Degrees of freedom from Welch-Satterthwaite: (va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1)).
    """
    n_a, n_b = len(a), len(b)
    diff = mean(b) - mean(a)
    if n_a < 2 or n_b < 2:
        return WelchResult(diff, n_a, n_b, None, None, None, None, None, level,
                           note=f"no test: each sample needs at least 2 values, got {n_a} and {n_b}")
    var_a, var_b = std(a) ** 2 / n_a, std(b) ** 2 / n_b
    if var_a == 0.0 and var_b == 0.0:
        if diff == 0.0:
            return WelchResult(diff, n_a, n_b, 0.0, None, 0.0, 0.0, 1.0, level,
                               note="both samples have zero variance and equal means, so p = 1")
        return WelchResult(diff, n_a, n_b, None, None, None, None, None, level,
                           note="no test: both samples have zero variance but different means")
    se = math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    t = diff / se
    half = t_ppf(0.5 + level / 2.0, df) * se
    p = min(1.0, 2.0 * t_sf(abs(t), df))
    return WelchResult(diff, n_a, n_b, t, df, diff - half, diff + half, p, level, note="")
