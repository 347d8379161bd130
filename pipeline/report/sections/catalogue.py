"""PyTorch's losses and initialisers: Which loss functions and initialisation methods does
PyTorch offer, and what do its regression losses do here?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import catalogue, stats, theory
from pipeline.report.data import MissingRuns, Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import base, mean_sd, seeds_label

SPEC = (
    "catalogue",
    "PyTorch's losses and initialisers",
    "Which loss functions and initialisation methods does PyTorch offer (d2l 3.3, exercise 2), "
    "and what do its regression losses do on clean data and with outliers?",
    "torch_losses",
)

# the compared losses at PyTorch's defaults (Huber δ = 1, SmoothL1 β = 1), in table order
LOSSES = ["mse", "huber", "smooth_l1", "l1"]
# stats.compare's verdict on (log w_error of a loss, log w_error of MSE), in words
VERDICT = {
    stats.NO_DIFFERENCE: stats.NO_DIFFERENCE,
    "a < b": "smaller error than MSE",
    "a > b": "larger error than MSE",
}


COLUMNS = {
    "why": "probe",
    "extra": "further inputs (probe: ones / 0.5)",
    "trained_here": "trained here",
}


def _catalogue_tables(s: Section) -> dict[str, Any]:
    cat = catalogue.catalogue()
    losses = pd.DataFrame(cat["losses"])
    inits = pd.DataFrame(cat["inits"])
    s.tables.append(
        (
            f"torch {cat['torch_version']}: every public torch.nn class ending in Loss that "
            "subclasses _Loss. Regression: built with its defaults and called on real-valued "
            "targets y of the prediction's shape, it is finite, its gradient vanishes at ŷ = y "
            "and it grows ±0.5 away (predicting the target minimises it).",
            losses.rename(columns=COLUMNS | {"name": "torch.nn"}),
        )
    )
    s.tables.append(
        (
            "Every public torch.nn.init function ending in _ (the deprecated names without _ "
            "left out). Applies: it fills this project's (1, d) weight (nn.Linear's layout) "
            "with finite values, required scalar arguments set to 0.5.",
            inits.rename(columns=COLUMNS | {"name": "torch.nn.init", "regression": "applies"}),
        )
    )
    return cat


def _names(frame: pd.DataFrame) -> str:
    return ", ".join(frame["name"]) or "none"


def _comparison(d: SweepData, s: Section, out: Path) -> tuple[dict[str, Any], str]:
    """PyTorch's regression losses at their defaults, converged (tail-averaged iterates)."""
    rows = d.select(
        **base("loss", "outliers", "epochs", "min_updates", "averaging"),
        lr=0.03,
        lr_scaling="none",
        B=10,
        averaging="tail",
        loss=LOSSES,
        delta=1.0,
    )
    rows = rows[rows["min_updates"] > 0]
    if not rows.empty:  # equal updates: the budget most cells have
        rows = rows[rows["min_updates"] == rows["min_updates"].mode().iloc[0]]
    rows = need(rows, varying="loss")
    # data sets with the MSE reference
    rows = s.use(rows[rows["outliers"].isin(rows.loc[rows["loss"] == "mse", "outliers"])])
    dd, n, sigma = int(rows["d"].iloc[0]), int(rows["n"].iloc[0]), float(rows["noise"].iloc[0])
    scale = float(d.config(rows["run_id"].iloc[0]).data.outliers.scale)
    updates = int(rows["updates"].iloc[0])
    last = "metrics.last_iterate_w_error"
    table: list[dict[str, Any]] = []
    answers: dict[str, dict[str, Any]] = {}
    for frac, at in rows.groupby("outliers"):
        ok_all = at[at["status"] == "converged"]
        mse = ok_all.loc[ok_all["loss"] == "mse", "w_error"]
        for loss in [x for x in LOSSES if x in set(at["loss"])]:
            g = at[at["loss"] == loss]
            ok = g[g["status"] == "converged"]
            th = theory.estimator_error(loss, dd, n, sigma, 1.0, float(frac), scale)
            c = stats.compare(np.log(ok["w_error"]), np.log(mse))
            sm = stats.summarize(ok["w_error"])
            verdict = "–" if loss == "mse" else VERDICT[c.verdict]
            mse_over = float(mse.mean()) / sm["mean"]
            table.append(
                {
                    "outliers": f"{frac:.0%}",
                    "loss": loss,
                    "w_error (mean ± sd)": mean_sd(ok["w_error"]),
                    "rms": sm["rms"],
                    "theory (asymptotic)": th,
                    "last iterate (mean)": float(np.mean(ok[last])) if last in ok else math.nan,
                    "vs mse (Welch, log)": verdict,
                    "seeds": seeds_label(ok["seed"]),
                    "not converged": int(len(g) - len(ok)),
                }
            )
            answers.setdefault(f"{frac:g}", {})[loss] = {
                "w_error_mean": sm["mean"],
                "w_error_sd": sm["sd"],
                "w_error_rms": sm["rms"],
                "theory": th,
                "last_iterate_mean": float(np.mean(ok[last])) if last in ok else math.nan,
                "seeds": sm["seeds"],
                "vs_mse": None if loss == "mse" else verdict,
                "mse_over_loss": None if loss == "mse" else mse_over,
            }
    t = pd.DataFrame(table)
    s.tables.append(
        (
            f"Equal updates ({updates}, B = 10, lr 0.03 for every loss), the model the mean of "
            f"the iterates of the second half; {scale:g}² outlier noise. Theory: the "
            "estimator's asymptotic error (OLS with σ² + p·s²; Huber and SmoothL1 "
            "E[ψ²]/E[ψ']²; L1 1/(4f(0)²)). Verdict: Welch's t-test on log w_error against "
            "MSE on the same data.",
            t,
        )
    )
    # SmoothL1(β) = Huber(δ = β)/β: at β = δ = 1 the same loss, so the same runs bit for bit
    pair = rows[rows["loss"].isin(["huber", "smooth_l1"])].pivot_table(
        index=["outliers", "seed"], columns="loss", values="w_error"
    )
    same = (
        float((pair["huber"] - pair["smooth_l1"]).abs().max())
        if {"huber", "smooth_l1"} <= set(pair)
        else math.nan
    )

    fig, ax = new_figure()
    width = 0.8 / max(1, t["outliers"].nunique())
    for i, (frac, g) in enumerate(rows.groupby("outliers")):
        present = [x for x in LOSSES if x in set(g["loss"])]
        xs = np.array([LOSSES.index(x) for x in present]) + i * width
        vals = [g.loc[(g["loss"] == x) & (g["status"] == "converged"), "w_error"] for x in present]
        ax.bar(
            xs,
            [v.mean() for v in vals],
            width,
            yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals],
            capsize=3,
            label=f"{frac:.0%} outliers",
        )
        ax.plot(
            xs,
            [theory.estimator_error(x, dd, n, sigma, 1.0, float(frac), scale) for x in present],
            "kD",
            markersize=5,
            zorder=3,
            label="theory (asymptotic)" if i == 0 else None,
        )
    ax.set_xticks(np.arange(len(LOSSES)) + width * (rows["outliers"].nunique() - 1) / 2)
    ax.set_xticklabels(LOSSES)
    ax.set_yscale("log")
    ax.set(ylabel="w_error (mean ± sd over seeds)", title="PyTorch's regression losses")
    ax.legend()
    s.figure = save(fig, out, s.key)

    def verdicts(frac: float) -> str:
        cells = answers.get(f"{frac:g}", {})
        return "; ".join(
            f"{k}: {v['vs_mse']} (MSE's w_error / {k}'s = {v['mse_over_loss']:.3g})"
            for k, v in cells.items()
            if k != "mse"
        )

    fracs = sorted(rows["outliers"].unique())
    l1 = [answers[f"{f:g}"].get("l1") for f in fracs]
    l1_last = [c["last_iterate_mean"] / c["w_error_mean"] for c in l1 if c]
    l1_rms = [c["w_error_rms"] / c["theory"] for c in l1 if c]
    text = (
        " ".join(
            f"{'Clean data' if f == 0 else f'With {f:.0%} outliers'}, against MSE: {verdicts(f)}."
            for f in fracs
        )
        + (
            f" SmoothL1 at its default β = 1 is Huber at δ = 1 (SmoothL1(β) = Huber(β)/β): "
            f"max |Δ w_error| between their runs over the seeds = {same:.2g}. "
            if math.isfinite(same)
            else " "
        )
        + (
            f"L1's gradient is sign(r), so its steps do not shrink near the optimum: its last "
            f"iterate is {min(l1_last):.3g}–{max(l1_last):.3g}× the averaged model's error, "
            "which is why every loss here is compared on tail-averaged iterates. L1's theory "
            "line is the exact least-absolute-deviations estimate (1.25× the OLS error on "
            f"clean Gaussian noise); its averaged run's RMS is {min(l1_rms):.3g}–"
            f"{max(l1_rms):.3g}× that line: with last iterates spread about as wide as "
            f"σ = {sigma:g}, constant-lr SGD smooths |r| over that width, and the average "
            "estimates a Huber-like M-estimate between LAD and OLS (as lr → 0 it becomes "
            "LAD)."
            if l1_last
            else ""
        )
    )
    return {
        "comparison": answers,
        "smooth_l1_vs_huber_max_abs_diff": same,
        "updates": updates,
    }, text


def build(d: SweepData, s: Section, out: Path) -> None:
    cat = _catalogue_tables(s)
    losses, inits = pd.DataFrame(cat["losses"]), pd.DataFrame(cat["inits"])
    regression = losses[losses["regression"]]
    s.answers = {
        "torch_version": cat["torch_version"],
        "losses": cat["losses"],
        "inits": cat["inits"],
        "regression_losses": list(regression["name"]),
        "trained_losses": list(losses.loc[losses["trained_here"], "name"]),
        "trained_inits": list(inits.loc[inits["trained_here"], "name"]),
    }
    untrained = regression[~regression["trained_here"]]
    text = (
        f"torch {cat['torch_version']} has {len(losses)} loss classes; {len(regression)} are "
        f"minimised by predicting a real-valued target (regression): {_names(regression)}. "
        f"This project trains {_names(losses[losses['trained_here']])}"
        + "".join(
            f"; not {r.name}"
            + (
                f", which needs a further input ({r.extra}) besides the prediction and the "
                "target: a second output this one-output linear model does not have"
                if r.extra
                else f" ({r.why})"
            )
            for r in untrained.itertuples()
        )
        + f". Of {len(inits)} initialisers, {int(inits['regression'].sum())} fill a (1, d) "
        f"weight (not: {_names(inits[~inits['regression']])}); trained here: "
        + ", ".join(f"{r.name} ({r.config})" for r in inits[inits["trained_here"]].itertuples())
        + ". "
    )
    try:
        numbers, compared = _comparison(d, s, out)
    except MissingRuns:
        s.answer = (
            text + "For the comparison of the regression losses on clean data and with "
            "outliers, run `make sweep SWEEP=torch_losses`."
        )
        return
    s.answers |= numbers
    s.answer = text + compared
