"""Seed statistics and the rules that turn numbers into conclusions.

- :func:`summarize` / :func:`seed_summary`: mean, sd, seeds, 95% t-interval and RMS per group.
- :func:`compare`: "no measurable difference" unless Welch's t-test rejects equal means at
  p < 0.05 (two-sided). Chosen over "overlapping 95% CIs", which is a much stricter test (two
  95% intervals can overlap while the difference is significant at p ≈ 0.005), so it would call
  real differences null; with ≥ 5 seeds per side Welch's test is well behaved.
- :func:`converged`: the epoch loss changed by less than 1e-3 (relative) over the last 10% of
  training, or by less than a stated noise-floor tolerance; :func:`failed`: diverged, a
  non-finite loss, or a final loss above the initial one (both from :mod:`pipeline.outcome`,
  where training classifies each run once).

scipy comes with mlflow (a declared dependency); it is used only for t quantiles/p-values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

# the convergence and failure rules live with the run outcome that training decides
from pipeline.outcome import converged as converged
from pipeline.outcome import failed as failed

NO_DIFFERENCE = "no measurable difference"


def _finite(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def rms(values: Any) -> float:
    """√(mean of squares) of the finite values (nan if none): the seed aggregate to hold
    against √E‖ŵ − w‖² theory lines. Non-finite (diverged) values must be flagged, not
    averaged in, so they are dropped here."""
    a = _finite(values)
    return float(np.sqrt(np.mean(a**2))) if len(a) else math.nan


def t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval for the mean of the finite values, t quantile with
    n − 1 degrees of freedom; (mean, nan, nan) for one value, all nan for none."""
    a = _finite(values)
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    mean = float(a.mean())
    if len(a) < 2:
        return mean, math.nan, math.nan
    half = float(_st.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half


def summarize(values: Any, level: float = 0.95) -> dict[str, float]:
    """mean, sd (ddof 1), seeds (finite values used), ci_low/ci_high, rms, and failed (values
    left out as non-finite)."""
    raw = np.asarray(values, dtype=float).ravel()
    a = _finite(raw)
    mean, low, high = t_interval(a, level)
    return {
        "mean": mean,
        "sd": float(a.std(ddof=1)) if len(a) > 1 else math.nan,
        "seeds": len(a),
        "ci_low": low,
        "ci_high": high,
        "rms": rms(a),
        "failed": int(len(raw) - len(a)),
    }


def seed_summary(
    df: pd.DataFrame, by: str | Sequence[str], value: str, level: float = 0.95
) -> pd.DataFrame:
    """One row per group of ``df.groupby(by)``: the columns of :func:`summarize` over the
    group's rows (one row per seed) for column ``value``. Non-finite values count as failed."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in df.groupby(keys, sort=True, dropna=False):
        key_t = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key_t, strict=True)), **summarize(g[value], level)})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`: verdict is NO_DIFFERENCE, "a < b" or "a > b"."""

    verdict: str
    diff: float  # mean(a) − mean(b)
    ratio: float  # mean(a) / mean(b)
    p_value: float
    n_a: int
    n_b: int

    @property
    def differs(self) -> bool:
        return self.verdict != NO_DIFFERENCE


def compare(a: Any, b: Any, alpha: float = 0.05) -> Comparison:
    """Welch's two-sided t-test on the finite values of a and b (seeds as replicates):
    p ≥ alpha (or fewer than 2 values per side, or zero spread on both sides with equal
    means) → "no measurable difference", else the direction. Values on very different
    scales (errors spanning decades) should be compared on log scale: pass np.log(...)."""
    x, y = _finite(a), _finite(b)
    mx = float(x.mean()) if len(x) else math.nan
    my = float(y.mean()) if len(y) else math.nan
    ratio = mx / my if my != 0 else math.inf
    if len(x) < 2 or len(y) < 2:
        return Comparison(NO_DIFFERENCE, mx - my, ratio, math.nan, len(x), len(y))
    if x.std() == 0 and y.std() == 0:
        p = 1.0 if mx == my else 0.0
    else:
        p = float(_st.ttest_ind(x, y, equal_var=False).pvalue)
    verdict = NO_DIFFERENCE if not p < alpha else ("a < b" if mx < my else "a > b")
    return Comparison(verdict, mx - my, ratio, p, len(x), len(y))


def tail_rms(values: Sequence[float] | np.ndarray, first: int = 0) -> float:
    """√(mean of squares) of ``values[first:]`` (nan if empty or non-finite): one run's
    stationary error from all its epoch-end draws after the transient (``first`` = the
    first epoch at the floor, e.g. ⌈:func:`pipeline.theory.updates_to_floor` / updates per
    epoch⌉). Averaging k draws per seed divides the seed-to-seed spread of the floor part
    by up to √k; the OLS part of the error is fixed per data set and does not average."""
    a = np.asarray(values, dtype=float)[first:]
    if len(a) == 0 or not np.isfinite(a).all():
        return math.nan
    return float(np.sqrt(np.mean(a**2)))


def within_factor(measured: float, theory: float, factor: float = 2.0) -> tuple[float, bool]:
    """(measured/theory, whether 1/factor ≤ ratio ≤ factor): the issue's "within 2× of
    theory" rule. A non-finite or non-positive value fails (ratio nan)."""
    if not (math.isfinite(measured) and math.isfinite(theory)) or measured <= 0 or theory <= 0:
        return math.nan, False
    ratio = measured / theory
    return ratio, 1 / factor <= ratio <= factor


def prediction_interval(values: Any, level: float = 0.95) -> tuple[float, float]:
    """(low, high): where one more draw from the values' distribution falls with probability
    ``level``, on log scale (positive values spanning decades, like losses): exp(m ± t·s·√(1 +
    1/k)), m and s the mean and sd of the k finite log values, t the Student-t quantile with
    k − 1 degrees of freedom. (nan, nan) for fewer than 2 values."""
    a = _finite(values)
    a = np.log(a[a > 0])
    if len(a) < 2:
        return math.nan, math.nan
    half = float(_st.t.ppf(0.5 + level / 2, len(a) - 1) * a.std(ddof=1) * math.sqrt(1 + 1 / len(a)))
    m = float(a.mean())
    return math.exp(m - half), math.exp(m + half)
