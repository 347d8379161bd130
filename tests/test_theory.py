"""The theory lines (pipeline.theory) against small real runs, and the seed rules (pipeline.stats).

Real runs use the stacked engine (no MLflow); seeds 0..4 as in the faq preset. Fast: ~1.5 s of
training in all unloaded (≈ 4 s on a loaded 2-core machine).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline import stats, theory
from pipeline.data import make_generators
from pipeline.theory_check import E0, base_config, with_values
from pipeline.train import History, make_problem, train

D, SIGMA, SEEDS = 2, 0.01, range(5)


@pytest.fixture(scope="module")
def base() -> Any:
    return base_config()


def run_seeds(
    base: Any, cells: list[dict[str, Any]], common: dict[str, Any]
) -> list[list[History]]:
    """hists[i][s]: cell i (cells differ only in lr/loss: they stack), seed s."""
    per_seed = [
        train([with_values(base, {**common, **cell, "seed": s}) for cell in cells]) for s in SEEDS
    ]
    return [[per_seed[s][i] for s in range(len(SEEDS))] for i in range(len(cells))]


# --- formulas -----------------------------------------------------------------------------


def test_bounds_scale_with_loss_and_reduction() -> None:
    X = np.random.default_rng(0).normal(size=(1000, D))
    mse = theory.full_batch_bound(X)
    assert 0.85 < mse < 1.0  # 1/λmax(ZᵀZ/n), ≈ 0.9-1.0 for n = 1000
    assert theory.full_batch_bound(X, "squared") == pytest.approx(2 * mse)
    assert theory.full_batch_bound(X, "huber") == pytest.approx(2 * mse)
    for B in (1, 10, 100):
        assert theory.full_batch_bound(X, "mse", "sum", B) == pytest.approx(mse / B)
        ms = theory.minibatch_bound(D, B)
        assert theory.minibatch_bound(D, B, "squared") == pytest.approx(2 * ms)
        assert theory.minibatch_bound(D, B, "mse", "sum") == pytest.approx(ms / B)
        assert ms < theory.minibatch_bound(D, B, exact=True) < 1
    assert [round(theory.minibatch_bound(D, B), 2) for B in (1, 10, 100)] == [0.2, 0.71, 0.96]


def test_noise_floor_formula() -> None:
    # the example: η 0.03, B 10, σ 0.01, d 2 → √(d·v) ≈ 7.9e-4
    v = theory.noise_floor_var(0.03, 10, D, SIGMA)
    assert math.sqrt(D * v) == pytest.approx(7.9e-4, rel=0.01)
    assert v == pytest.approx(0.03 * SIGMA**2 / (10 - 0.03 * 14))
    # ½-squared at 2η and sum at η/B make the same updates, so the same floor
    assert theory.noise_floor_var(0.06, 10, D, SIGMA, loss="squared") == pytest.approx(v)
    assert theory.noise_floor_var(0.003, 10, D, SIGMA, reduction="sum") == pytest.approx(v)
    # finite population: none left for the full batch; unstable: inf
    assert theory.noise_floor_var(0.03, 10, D, SIGMA, n=1000) == pytest.approx(v * 990 / 999)
    assert theory.noise_floor_var(0.03, 1000, D, SIGMA, n=1000) == 0
    assert theory.noise_floor_var(0.3, 1, D, SIGMA) == math.inf
    # the exact diagonal solve is close to the closed form for the weights
    exact = theory.noise_floor_var_exact(0.03, 10, D, SIGMA)
    assert exact[:D] == pytest.approx([v, v], rel=0.01)
    # w_error sums d weight variances (not d + 1) plus the OLS error dσ²/(n − d − 2)
    total = theory.expected_w_error_sq(0.03, 10, D, SIGMA, 1000)
    assert total == pytest.approx(D * v * 990 / 999 + D * SIGMA**2 / 996)


def test_ols_reshuffle_transient_huber() -> None:
    assert theory.ols_error(D, 1000, SIGMA, exact=False) == pytest.approx(
        SIGMA * math.sqrt(D / 1000)
    )
    ns = [100, 1000, 10000]
    assert theory.loglog_slope(ns, [theory.ols_error(D, n, SIGMA) for n in ns]) == pytest.approx(
        theory.OLS_SLOPE, abs=0.01
    )
    assert theory.reshuffle_factor(0.03, 1000, 1000) == 0  # one batch per epoch: GD
    assert theory.reshuffle_factor(0.03, 10000, 1) > 0.99  # m·η ≫ 1: reshuffling is moot
    assert theory.reshuffle_factor(0.01, 1000, 100) < 0.01  # m·η ≪ 1: far below the formula
    t = theory.transient_updates(E0, 1e-3, 0.03)
    assert t == pytest.approx(math.log(E0 / 1e-3) / 0.06)
    assert theory.transient_updates(E0, 1e-3, 0.2, 1, D) == math.inf  # at the ms bound
    # Huber: clean data with δ ≫ σ is ½-squared; 5% outliers at scale 10, δ 1: ≈ 10× better
    e2, e1 = theory.huber_moments(SIGMA, 1.0)
    assert e2 == pytest.approx(SIGMA**2) and e1 == pytest.approx(1.0)
    sq = theory.ols_error(D, 1000, math.sqrt(theory.effective_sigma2("squared", SIGMA, 0.05, 10)))
    hub = theory.huber_estimator_error(D, 1000, SIGMA, 1.0, 0.05, 10)
    assert sq == pytest.approx(0.10, rel=0.01) and 8 < sq / hub < 12


def test_ols_train_and_val_mse_against_monte_carlo() -> None:
    # least squares with an intercept on n = 50 noisy examples, d = 2 true weights then zeros:
    # below the interpolation threshold (d = 10, 40) and past it (d = 100: minimum norm)
    rng = np.random.default_rng(0)
    n, sigma, b = 50, 1.0, 4.2
    assert theory.ols_val_mse(49, n, sigma) == math.inf  # d + 1 = n: the peak
    assert theory.ols_train_mse(60, n, sigma) == 0.0
    for d in (10, 40, 100):
        w = np.r_[2.0, -3.4, np.zeros(d - 2)]
        train, val = [], []
        for _ in range(300):
            X = rng.standard_normal((n, d))
            y = X @ w + b + sigma * rng.standard_normal(n)
            A = np.c_[X, np.ones(n)]
            theta = np.linalg.lstsq(A, y, rcond=None)[0]  # the minimum-norm one when d + 1 > n
            train.append(np.mean((A @ theta - y) ** 2))
            # E over a fresh x ~ N(0, I): σ² + ‖ŵ − w‖² + (b̂ − b)²
            val.append(sigma**2 + np.sum((theta[:d] - w) ** 2) + (theta[d] - b) ** 2)
        signal = float(w @ w + b**2)
        assert np.mean(train) == pytest.approx(theory.ols_train_mse(d, n, sigma), abs=0.02)
        assert np.mean(val) == pytest.approx(theory.ols_val_mse(d, n, sigma, signal), rel=0.08)


# --- against real training ------------------------------------------------------------------


def test_noise_floor_within_2x_of_real_runs(base: Any) -> None:
    """RMS over seeds 0..4 of the w_error draws at the floor (epoch ends after the
    transient) against √(d·v·fpc + OLS²), OLS² the runs' own; cells of the faq kind, MSE
    mean and ½-squared (at twice the lr: the same updates)."""
    cases = [  # (common, cells); each case's cells differ in lr/loss only, so they stack
        ({"data.n": 300, "train.batch_size": 1, "train.epochs": 3}, [(0.03, "mse"), (0.1, "mse")]),
        (
            {"data.n": 1000, "train.batch_size": 10, "train.epochs": 6},
            [(0.1, "mse"), (0.3, "mse"), (0.2, "squared")],
        ),
        ({"data.n": 100, "train.batch_size": 10, "train.epochs": 40}, [(0.03, "mse")]),
    ]
    for common, specs in cases:
        cells = [{"optim.lr": lr, "loss.name": loss} for lr, loss in specs]
        n, B = common["data.n"], common["train.batch_size"]
        for (lr, loss), hists in zip(specs, run_seeds(base, cells, common), strict=True):
            m = -(-n // B)
            first = math.ceil(theory.updates_to_floor(lr, B, n, D, SIGMA, E0, loss) / m)
            assert first < common["train.epochs"], (common, lr)
            measured = stats.rms([stats.tail_rms(h.epochs["w_error"], first) for h in hists])
            floor2 = D * theory.noise_floor_var(lr, B, D, SIGMA, n, loss)
            ols2 = float(np.mean([h.ols_w_error**2 for h in hists]))
            ratio = measured / math.sqrt(floor2 + ols2)
            assert 0.5 < ratio < 2, (common, lr, loss, ratio)
            # with the reshuffle correction too (it only lowers the floor term)
            r = theory.reshuffle_factor(theory.effective_lr(lr, loss), n, B)
            assert 0.5 < measured / math.sqrt(floor2 * r + ols2) < 2


def test_reshuffled_epochs_floor_below_formula_by_R(base: Any) -> None:
    """n 100, B 10, lr 0.1: m·η = 1, so reshuffling removes most of the floor term
    (R ≈ 0.3); the R-corrected line predicts the floor draws closely, the plain one is high."""
    n, B, lr, epochs = 100, 10, 0.1, 30
    (hists,) = run_seeds(
        base, [{"optim.lr": lr}], {"data.n": n, "train.batch_size": B, "train.epochs": epochs}
    )
    first = math.ceil(theory.updates_to_floor(lr, B, n, D, SIGMA, E0) / 10)
    measured = stats.rms([stats.tail_rms(h.epochs["w_error"], first) for h in hists])
    floor2 = D * theory.noise_floor_var(lr, B, D, SIGMA, n)
    ols2 = float(np.mean([h.ols_w_error**2 for h in hists]))
    r = theory.reshuffle_factor(lr, n, B)
    assert 0.25 < r < 0.35
    corrected = measured / math.sqrt(floor2 * r + ols2)
    plain = measured / math.sqrt(floor2 + ols2)
    assert 0.85 < corrected < 1.18 and plain < 0.9, (corrected, plain)


def test_stability_bounds_on_real_runs(base: Any) -> None:
    """B = 10, 3 epochs: 0.8 × the full-batch bound trains, 1.2 × diverges, for MSE mean,
    ½-squared (bound × 2) and MSE sum (bound / B); seed 0's own data gives the bound."""
    p = make_problem(with_values(base, {"seed": 0}), make_generators(0))
    B = 10
    cells: list[dict[str, Any]] = []
    expected: list[bool] = []
    for loss, red in (("mse", "mean"), ("squared", "mean"), ("mse", "sum")):
        bound = theory.full_batch_bound(p.X.numpy(), loss, red, B)
        for factor, diverges in ((0.8, False), (1.2, True)):
            cells.append({"loss.name": loss, "loss.reduction": red, "optim.lr": factor * bound})
            expected.append(diverges)
    hists = train([with_values(base, {**c, "seed": 0}) for c in cells])
    assert [h.diverged for h in hists] == expected
    assert theory.full_batch_bound(p.X.numpy(), "mse", "sum", B) == pytest.approx(
        theory.full_batch_bound(p.X.numpy()) / B
    )


# --- stats rules ----------------------------------------------------------------------------


def test_compare_detects_real_and_null_differences() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 0.1, 5), rng.normal(1.5, 0.1, 5)
    c = stats.compare(a, b)
    assert c.differs and c.verdict == "a < b" and c.p_value < 0.05
    assert stats.compare(b, a).verdict == "a > b"
    null = stats.compare(rng.normal(1.0, 0.1, 5), rng.normal(1.0, 0.1, 5))
    assert null.verdict == stats.NO_DIFFERENCE and null.p_value >= 0.05
    # too few seeds, diverged (inf) values dropped, identical constants
    assert stats.compare([1.0], [2.0]).verdict == stats.NO_DIFFERENCE
    assert stats.compare([1.0, 1.0, math.inf], [1.0, 1.0]).verdict == stats.NO_DIFFERENCE
    assert stats.compare([1.0, 1.0], [2.0, 2.0]).verdict == "a < b"


def test_summaries() -> None:
    s = stats.summarize([1.0, 2.0, 3.0, math.inf])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["seeds"] == 3 and s["failed"] == 1
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert s["rms"] == pytest.approx(math.sqrt(14 / 3))
    df = pd.DataFrame({"B": [1, 1, 10, 10], "seed": [0, 1, 0, 1], "w": [1.0, 3.0, 2.0, 2.0]})
    table = stats.seed_summary(df, "B", "w")
    assert list(table["B"]) == [1, 10] and list(table["mean"]) == [2.0, 2.0]
    assert list(table["seeds"]) == [2, 2] and table["sd"].iloc[1] == 0
    assert stats.tail_rms([10.0, 3.0, 4.0], first=1) == pytest.approx(math.sqrt(12.5))
    assert stats.within_factor(1.5, 1.0) == (1.5, True)
    assert stats.within_factor(0.4, 1.0) == (0.4, False)
    assert stats.within_factor(math.inf, 1.0)[1] is False


def test_converged_and_failed() -> None:
    decaying = [10 * 0.5**k + 1.0 for k in range(40)]
    assert stats.converged(decaying)
    assert not stats.converged(decaying[:5])  # still falling by > 1e-3 over the last 10%
    noisy = [5.0, 1.0e-4, 1.3e-4, 1.1e-4, 1.2e-4]  # at a noise floor: jitter, no trend
    assert not stats.converged(noisy)
    assert stats.converged(noisy, floor_tol=3e-5)
    assert not stats.converged([1.0])  # no epoch
    assert stats.failed([1.0, 2.0]) and not stats.failed([2.0, 1.0])
    assert stats.failed([1.0, math.nan]) and stats.failed([1.0, 0.5], diverged=True)
    assert not stats.converged([1.0, 2.0, 2.0])  # failed: above its initial loss


def test_l1_and_smooth_l1_estimator_errors() -> None:
    sigma, p, s = 0.01, 0.05, 10.0
    # LAD on Gaussian noise: σ² → 1/(4 f(0)²) = πσ²/2 (1.25× the OLS error)
    assert theory.effective_sigma2("l1", sigma) == pytest.approx(math.pi * sigma**2 / 2)
    # outliers barely move the density at 0: ≈ πσ²/(2(1 − p)²)
    assert theory.effective_sigma2("l1", sigma, p, s) == pytest.approx(
        math.pi * sigma**2 / 2 / (1 - p) ** 2, rel=0.01
    )
    # SmoothL1(β) = Huber(β)/β: the same minimiser
    for delta in (0.01, 1.0):
        assert theory.estimator_error("smooth_l1", 2, 1000, sigma, delta, p, s) == (
            theory.huber_estimator_error(2, 1000, sigma, delta, p, s)
        )
    assert theory.estimator_error("mse", 2, 1000, sigma) == theory.ols_error(2, 1000, sigma)
