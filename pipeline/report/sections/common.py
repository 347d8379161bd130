"""What several sections share: the chapter's baseline, seed summaries, run status, theory."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline import stats, theory
from pipeline.outcome import OUTCOMES

# The d2l chapter's setting (what `python -m pipeline` trains), less the key a section varies:
# sections select their runs by these params, so any sweep's matching runs count.
BASE: dict[str, Any] = {
    "source": "memory",
    "sgd": "no_grad",
    "loss": "mse",
    "reduction": "mean",
    "n": 1000,
    "epochs": 3,
    "outliers": 0.0,
    "init": "normal",
    "min_updates": 0,
    "schedule": "constant",
    "averaging": "none",
    "dtype": "float64",  # the book section's float32 runs are its own
    "weight_decay": 0.0,
    "zero_features": 0,
}


def base(*without: str, **overrides: Any) -> dict[str, Any]:
    """BASE without some keys, with others set."""
    return {k: v for k, v in BASE.items() if k not in without} | overrides


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    """Best wall time of ``repeat`` calls (a closed-form computation, not a training run)."""
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def seeds_label(seeds: Sequence[int]) -> str:
    """'5 (0–4)': how many seeds stand behind a number, and which."""
    s = sorted({int(x) for x in seeds})
    if not s:
        return "0"
    span = f"{s[0]}–{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ",".join(map(str, s))
    return f"{len(s)} ({span})" if len(s) > 1 else f"1 ({s[0]})"


def mean_sd(values: Any) -> str:
    """'1.2e-03 ± 3.1e-04' over the finite values; '–' when there are none."""
    sm = stats.summarize(values)
    if sm["seeds"] == 0:
        return "–"
    sd = "" if math.isnan(sm["sd"]) else f" ± {sm['sd']:.2g}"
    return f"{sm['mean']:.3g}{sd}"


def spread(rows: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group: mean ± sd, RMS, seeds (and which), runs left out (diverged/failed)."""
    out = []
    for key, g in rows.groupby(by, sort=True):
        key_t = key if isinstance(key, tuple) else (key,)
        ok = g[g["status"] == "converged"] if "status" in g else g[~g["diverged"]]
        sm = stats.summarize(ok[value])
        out.append(
            {
                **dict(zip(by, key_t, strict=True)),
                f"{value} (mean ± sd)": mean_sd(ok[value]),
                "mean": sm["mean"],
                "sd": sm["sd"],
                "rms": sm["rms"],
                "seeds": seeds_label(ok["seed"]),
                "n_seeds": len(ok),
                "left out": len(g) - len(ok),
            }
        )
    return pd.DataFrame(out)


def outcome_counts(rows: pd.DataFrame) -> str:
    """'45 converged, 3 unconverged, 2 diverged': a group's runs by outcome (zeros left out)."""
    counts = rows["outcome"].value_counts()
    parts = [f"{int(counts[o])} {o}" for o in OUTCOMES if o in counts]
    return ", ".join(parts) or "0 runs"


def effective_lr(row: Any) -> float:
    """The lr the optimiser used (optim.lr after optim.lr_scaling)."""
    power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0, "inverse": -1.0}[row.lr_scaling]
    return float(row.lr) * (float(row.B) / float(row.ref_B)) ** power


def floor_theory(row: Any) -> float:
    """√E‖ŵ − w‖² of constant-lr SGD at its floor, the OLS error included (theory §2)."""
    return theory.expected_w_error(
        effective_lr(row),
        int(row.B),
        int(row.d),
        float(row.noise),
        int(row.n),
        row.loss,
        row.reduction,
    )


def log_ticks(ax: Any, values: Sequence[float]) -> None:
    """Plain tick labels at the swept values of a log axis (1000, not 1e+03)."""
    vals = sorted(set(values))
    ax.set_xticks(vals)
    ax.set_xticklabels([f"{v:g}" for v in vals])
    ax.minorticks_off()


def finite(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]
