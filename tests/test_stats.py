"""The rank test against independent computations: every permutation counted by brute force
for the exact p-values, textbook values, and the normal approximation's agreement with the
exact distribution where both apply."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from watchdog import stats


def brute_upper(primary: list[float], baseline: list[float]) -> float:
    """P(U >= observed) by relabelling the pooled values every possible way."""
    pooled = [*primary, *baseline]
    n1 = len(primary)

    def u_of(xs: list[float], ys: list[float]) -> float:
        return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in xs for y in ys)

    observed = u_of(primary, baseline)
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), n1):
        xs = [pooled[i] for i in chosen]
        ys = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        hits += u_of(xs, ys) >= observed - 1e-9
    return hits / total


@pytest.mark.parametrize("seed", range(12))
def test_exact_p_values_equal_counting_every_relabelling(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not a secret
    n1, n2 = rng.randint(1, 6), rng.randint(1, 6)
    shift = rng.choice([0.0, 0.5, 2.0])
    primary = [rng.random() + shift for _ in range(n1)]
    baseline = [rng.random() for _ in range(n2)]
    found = stats.worse(primary, baseline)
    assert found.p_value == pytest.approx(brute_upper(primary, baseline), abs=1e-12)
    pairs = sum(x > y for x in primary for y in baseline)
    assert found.u == pairs and found.effect == pytest.approx(pairs / (n1 * n2))


def test_a_clear_regression_and_none() -> None:
    slow = [400.0, 410.0, 395.0, 420.0, 405.0, 415.0, 399.0, 430.0]
    fast = [38.0, 40.0, 37.0, 39.0, 41.0, 36.0, 42.0, 38.5]
    worse = stats.worse(slow, fast)
    assert worse.effect == 1.0 and worse.p_value == pytest.approx(1 / math.comb(16, 8))
    better = stats.worse(fast, slow)
    assert better.effect == 0.0 and better.p_value == 1.0  # one-sided: faster is never worse


def test_ties_and_large_samples_use_the_corrected_normal_approximation() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not a secret
    baseline = [round(rng.gauss(40, 5)) for _ in range(200)]  # whole milliseconds: many ties
    same = [round(rng.gauss(40, 5)) for _ in range(200)]
    slower = [round(rng.gauss(46, 5)) for _ in range(200)]
    assert stats.worse(same, baseline).p_value > 0.01
    regression = stats.worse(slower, baseline)
    assert regression.p_value < 1e-6 and regression.effect > 0.7


def test_the_approximation_agrees_with_the_exact_distribution() -> None:
    rng = random.Random(3)  # noqa: S311 - reproducible test data, not a secret
    primary = [rng.random() + 0.3 for _ in range(8)]
    baseline = [rng.random() for _ in range(8)]
    exact = stats.worse(primary, baseline).p_value
    approximated = stats._normal_upper(
        stats.worse(primary, baseline).u, 8, 8, [*primary, *baseline]
    )
    assert approximated == pytest.approx(exact, abs=0.01)


def test_every_value_the_same_says_nothing() -> None:
    assert stats.worse([5.0] * 20, [5.0] * 20).p_value == 1.0


@pytest.mark.parametrize(
    ("primary", "baseline", "message"),
    [([], [1.0], "at least one"), ([1.0], [], "at least one"), ([math.nan], [1.0], "NaN")],
)
def test_missing_data_is_refused_never_counted(
    primary: list[float], baseline: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        stats.worse(primary, baseline)


def test_ranks_share_ties() -> None:
    assert stats.ranks([10.0, 20.0, 10.0, 30.0]) == [1.5, 3.0, 1.5, 4.0]


@pytest.mark.parametrize(("q", "expected"), [(0.0, 1.0), (0.5, 2.5), (0.95, 3.85), (1.0, 4.0)])
def test_quantiles_interpolate_like_numpy(q: float, expected: float) -> None:
    assert stats.quantile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_bad_quantiles_are_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        stats.quantile([], 0.5)
    with pytest.raises(ValueError, match="outside"):
        stats.quantile([1.0], 1.5)


# Reference values from SciPy 1.x, computed once outside the project:
#   scipy.stats.mannwhitneyu(a, b, alternative="greater", method="asymptotic",
#                            use_continuity=True)
SCIPY_ASYMPTOTIC = [
    # small samples with ties: the tie-corrected normal approximation, never the exact count
    ([3, 4, 4, 5, 6], [1, 2, 2, 3, 4], 22.5, 0.021609793586895437),
    ([1, 2, 2], [2, 3, 3], 1.0, 0.9703267806040401),
    ([1, 2], [2, 3], 0.5, 0.9487647825701253),
    ([1, 2], [2], 0.5, 0.9213503964748574),  # a variance below 1 is still a variance
    # nine against three, no ties: too large for counting
    ([10, 11, 12, 13, 14, 15, 16, 17, 18], [1, 12.5, 30], 15.0, 0.42665370984355766),
]


@pytest.mark.parametrize(("primary", "baseline", "u", "p"), SCIPY_ASYMPTOTIC)
def test_the_approximation_matches_scipy(
    primary: list[float], baseline: list[float], u: float, p: float
) -> None:
    made = stats.worse(primary, baseline)
    assert made == stats.Comparison(
        u=u,
        p_value=pytest.approx(p, rel=1e-12),  # type: ignore[arg-type]
        effect=u / (len(primary) * len(baseline)),
        n_primary=len(primary),
        n_baseline=len(baseline),
    )


def test_ties_at_the_end_share_their_rank() -> None:
    assert stats.ranks([1.0, 2.0, 2.0]) == [1.0, 2.5, 2.5]
    assert stats.ranks([5.0, 5.0]) == [1.5, 1.5]


def test_refusals_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^both samples need at least one value$"):
        stats.worse([], [1.0])
    with pytest.raises(ValueError, match=r"^a sample holds NaN$"):
        stats.worse([1.0], [math.nan])
    with pytest.raises(ValueError, match=r"^no values$"):
        stats.quantile([], 0.5)
