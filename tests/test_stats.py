"""common/stats.py against scipy.stats (the oracle, test-only), closed forms and hand-computed values.

Tolerances: 1e-10 absolute for probabilities (CDF, p-values) and 1e-10 relative for quantiles,
t statistics, degrees of freedom and interval ends.
"""

import math

import pytest
from scipy import special, stats as scipy_stats

from common.stats import betainc, mean, mean_ci, std, t_cdf, t_ppf, t_sf, welch_test

TOL = 1e-10

DFS = [0.5, 1, 1.5, 2, 3, 4, 4.7, 7, 10, 30, 100, 1000, 1e4]
T_VALUES = [-1e6, -50, -5, -2.5, -1, -0.1, 0, 0.3, 1, 2, 7, 40, 1e4]
QUANTILES = [1e-12, 1e-6, 1e-3, 0.025, 0.3, 0.5, 0.6, 0.9, 0.975, 0.999, 1 - 1e-9]


def relative_error(value: float, expected: float) -> float:
    return abs(value - expected) / max(1.0, abs(expected))


@pytest.mark.parametrize("df", DFS)
def test_t_cdf_matches_scipy(df):
    for t in T_VALUES:
        assert abs(t_cdf(t, df) - scipy_stats.t.cdf(t, df)) < TOL, (t, df)


@pytest.mark.parametrize("df", DFS)
def test_t_sf_matches_scipy(df):
    for t in T_VALUES:
        assert abs(t_sf(t, df) - scipy_stats.t.sf(t, df)) < TOL, (t, df)


@pytest.mark.parametrize("df", DFS)
def test_t_ppf_matches_scipy(df):
    for q in QUANTILES:
        assert relative_error(t_ppf(q, df), scipy_stats.t.ppf(q, df)) < TOL, (q, df)


def test_t_ppf_inverts_cdf():
    for df in (1, 2.5, 9, 200):
        for q in (0.01, 0.2, 0.7, 0.995):
            assert abs(t_cdf(t_ppf(q, df), df) - q) < TOL, (q, df)


def test_t_cdf_closed_forms_near_zero():
    # df = 1 is the Cauchy distribution and df = 2 has an algebraic CDF; both are exact references
    # where scipy itself loses digits (|t| around 1e-8).
    for t in (1e-8, -1e-8, 1e-3, 0.5, 3.0, 100.0):
        assert abs(t_cdf(t, 1) - (0.5 + math.atan(t) / math.pi)) < 1e-15, t
        assert abs(t_cdf(t, 2) - (0.5 + t / (2 * math.sqrt(2 + t * t)))) < 1e-15, t


def test_betainc_matches_scipy():
    for a, b in [(0.5, 0.5), (1, 1), (2, 3), (0.25, 7), (15, 0.5), (50, 40), (500, 0.5)]:
        for x in (0.0, 1e-6, 0.01, 0.2, 0.5, 0.77, 0.999, 1.0):
            assert abs(betainc(a, b, x) - special.betainc(a, b, x)) < TOL, (a, b, x)


def test_t_quantiles_by_hand():
    # Printed t tables: t(0.975, 1) = 12.7062 and t(0.975, 4) = 2.7764.
    assert round(t_ppf(0.975, 1), 4) == 12.7062
    assert round(t_ppf(0.975, 4), 4) == 2.7764
    assert t_ppf(0.5, 3) == 0.0
    assert abs(t_ppf(0.025, 4) + t_ppf(0.975, 4)) < TOL


def test_mean_and_std_by_hand():
    sample = [2, 4, 4, 4, 5, 5, 7, 9]
    assert mean(sample) == 5.0
    assert abs(std(sample) - math.sqrt(32 / 7)) < 1e-15  # sum of squares 32 over n - 1 = 7


def test_mean_ci_by_hand():
    # 1..5: mean 3, s = sqrt(2.5), s / sqrt(5) = 0.70711, half width 2.7764 x 0.70711 = 1.9632.
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.n == 5
    assert ci.mean == 3.0
    assert abs(ci.std - math.sqrt(2.5)) < 1e-15
    assert round(ci.low, 4) == 1.0368
    assert round(ci.high, 4) == 4.9632


def test_mean_ci_matches_scipy():
    sample = [0.9812, 0.9790, 0.9825, 0.9801]
    ci = mean_ci(sample)
    low, high = scipy_stats.t.interval(0.95, len(sample) - 1, loc=mean(sample), scale=scipy_stats.sem(sample))
    assert relative_error(ci.low, low) < TOL
    assert relative_error(ci.high, high) < TOL


def test_mean_ci_single_value_has_no_interval():
    ci = mean_ci([0.97])
    assert ci.mean == 0.97
    assert ci.std is None
    assert ci.low is None
    assert ci.high is None


WELCH_CASES = [
    ([0.1, 0.4], [0.3, 0.9]),
    ([1.0, 2.0, 3.0], [1.5, 2.5, 4.0]),
    ([0.975, 0.977, 0.976], [0.980, 0.978, 0.983, 0.981, 0.979]),
    ([5.0, 5.1, 4.9, 5.2, 5.0, 4.8, 5.3], [6.1, 3.9, 7.0]),
    ([0.5, 0.5, 0.5], [0.4, 0.6, 0.7]),  # one sample with zero variance
    ([10.0, 12.0, 9.5, 11.0], [10.0, 12.0, 9.5, 11.0]),  # identical samples
]


# scipy warns about catastrophic cancellation when a sample has zero variance; the values are still exact.
@pytest.mark.filterwarnings("ignore:Precision loss occurred in moment calculation:RuntimeWarning")
@pytest.mark.parametrize("a,b", WELCH_CASES)
def test_welch_matches_scipy(a, b):
    result = welch_test(a, b)
    # scipy tests mean(first) - mean(second); welch_test(a, b) reports mean(b) - mean(a).
    reference = scipy_stats.ttest_ind(b, a, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert abs(result.diff - (mean(b) - mean(a))) < 1e-15
    assert relative_error(result.t, reference.statistic) < TOL
    assert relative_error(result.df, reference.df) < TOL
    assert abs(result.p - reference.pvalue) < TOL
    assert relative_error(result.low, interval.low) < TOL
    assert relative_error(result.high, interval.high) < TOL
    assert result.note == ""


def test_welch_equal_arms_give_p_one():
    result = welch_test([0.97, 0.98, 0.99], [0.97, 0.98, 0.99])
    assert result.diff == 0.0
    assert abs(result.p - 1.0) < TOL
    assert result.low < 0 < result.high


def test_welch_zero_variance_equal_means():
    result = welch_test([0.5, 0.5], [0.5, 0.5, 0.5])
    assert result.p == 1.0
    assert (result.low, result.high) == (0.0, 0.0)
    assert "zero variance" in result.note


def test_welch_zero_variance_unequal_means():
    result = welch_test([0.5, 0.5], [0.6, 0.6])
    assert abs(result.diff - 0.1) < 1e-15
    assert result.p is None
    assert result.low is None
    assert result.t is None
    assert "zero variance" in result.note


def test_welch_single_value_has_no_test():
    result = welch_test([0.5], [0.6, 0.7])
    assert abs(result.diff - 0.15) < 1e-15
    assert result.p is None
    assert result.df is None
    assert "at least 2 values" in result.note


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError):
        t_cdf(1.0, math.inf)
    with pytest.raises(ValueError):
        t_ppf(1.0, 3)
    with pytest.raises(ValueError):
        t_ppf(0.0, 3)
    with pytest.raises(ValueError):
        std([1.0])
    with pytest.raises(ValueError):
        mean([])
    with pytest.raises(ValueError):
        betainc(2, 3, 1.5)
