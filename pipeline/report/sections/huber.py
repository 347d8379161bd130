"""Huber vs squared loss: What does Huber loss buy, on clean data and with outliers?"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import stats, theory
from pipeline.report.data import Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import base, mean_sd, seeds_label

SPEC = (
    "huber",
    "Huber vs squared loss",
    "What does Huber loss buy, on clean data and with outliers?",
    "loss",
)


def build(d: SweepData, s: Section, out: Path) -> None:
    rows = d.select(
        **base("loss", "outliers", "epochs", "min_updates", "averaging"),
        lr=0.03,
        lr_scaling="none",
        B=10,
        averaging="tail",
        loss=["squared", "huber"],
    )
    rows = rows[rows["min_updates"] > 0]
    rows = s.use(need(rows, varying="loss"))
    dd, n, sigma = int(rows["d"].iloc[0]), int(rows["n"].iloc[0]), float(rows["noise"].iloc[0])
    scale = float(d.config(rows["run_id"].iloc[0]).data.outliers.scale)
    rows = rows.assign(
        estimator=[
            "squared" if r.loss == "squared" else f"huber δ={r.delta:g}" for r in rows.itertuples()
        ]
    )
    table = []
    for (frac, est), g in rows.groupby(["outliers", "estimator"]):
        ok = g[g["status"] == "converged"]
        r = g.iloc[0]
        th = (
            theory.ols_error(dd, n, math.sqrt(sigma**2 + frac * scale**2))
            if r.loss == "squared"
            else theory.huber_estimator_error(dd, n, sigma, float(r.delta), frac, scale)
        )
        table.append(
            {
                "outliers": f"{frac:.0%}",
                "fraction": frac,
                "estimator": est,
                "delta": float(r.delta) if r.loss == "huber" else math.nan,
                "w_error (mean ± sd)": mean_sd(ok["w_error"]),
                "mean": float(np.mean(ok["w_error"])) if len(ok) else math.nan,
                "rms": stats.rms(ok["w_error"]),
                "theory (asymptotic)": th,
                "seeds": seeds_label(ok["seed"]),
                "not converged": int(len(g) - len(ok)),
            }
        )
    t = pd.DataFrame(table)
    s.tables.append(
        (
            "Converged runs (6000 updates, iterates of the second half averaged), B = 10, lr "
            "0.03; outliers: a fraction of labels with extra N(0, 10²) noise. Theory: the "
            "estimator's asymptotic error, OLS with σ² + p·s², Huber (E[ψ²]/E[ψ']²)·(ZᵀZ)⁻¹.",
            t.drop(columns=["fraction", "delta", "mean"]),
        )
    )
    # the rule: per fraction and δ, squared vs Huber by Welch's test on log w_error
    verdicts = {}
    done = rows[rows["status"] == "converged"]  # as in the table: converged runs only
    for (frac, est), g in done[done["loss"] == "huber"].groupby(["outliers", "estimator"]):
        sq = done[(done["loss"] == "squared") & (done["outliers"] == frac)]
        c = stats.compare(np.log(sq["w_error"]), np.log(g["w_error"]))
        verdicts[frac, est] = (c, float(sq["w_error"].mean() / g["w_error"].mean()))
    ratio = {f"{frac:g}/{est}": r for (frac, est), (_, r) in verdicts.items()}
    five = verdicts.get((0.05, "huber δ=1"))
    clean = verdicts.get((0.0, "huber δ=1"))
    s.answers = {
        "outliers_squared_over_huber": five[1] if five else math.nan,
        "clean_squared_over_huber": clean[1] if clean else math.nan,
        "squared_over_huber": ratio,
    }
    helps = [k for k, (c, _) in verdicts.items() if c.verdict == "a > b"]
    hurts = [k for k, (c, _) in verdicts.items() if c.verdict == "a < b"]
    same = [k for k, (c, _) in verdicts.items() if not c.differs]

    fig, ax = new_figure()
    for frac, g in t.groupby("fraction"):
        h = g[g["estimator"] != "squared"].sort_values("delta")
        errs = [
            float(
                np.std(
                    rows.loc[(rows["outliers"] == frac) & (rows["estimator"] == e), "w_error"],
                    ddof=1,
                )
            )
            for e in h["estimator"]
        ]
        line = ax.errorbar(
            h["delta"],
            h["mean"],
            yerr=errs,
            fmt="o-",
            capsize=3,
            label=f"Huber, {frac:.0%} outliers",
        )
        sq = g[g["estimator"] == "squared"]["mean"]
        if len(sq):
            ax.axhline(
                float(sq.iloc[0]),
                ls="--",
                color=line[0].get_color(),
                label=f"squared, {frac:.0%} outliers",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted(rows["delta"][rows["loss"] == "huber"].unique()))
    ax.set_xticklabels([f"{x:g}" for x in sorted(rows["delta"][rows["loss"] == "huber"].unique())])
    ax.minorticks_off()
    ax.set(xlabel="Huber δ", ylabel="w_error (mean ± sd, 5 seeds)", title="Huber vs squared loss")
    ax.legend(fontsize=7)
    s.figure = save(fig, out, s.key)

    def names(keys: list[tuple[float, str]]) -> str:
        return ", ".join(f"{frac:.0%} outliers {est}" for frac, est in sorted(keys)) or "none"

    s.answer = (
        (
            f"With 5% outliers Huber (δ = 1) gives {five[1]:.3g}× smaller w_error than the "
            f"squared loss on converged runs: beyond δ its gradient is capped, so a corrupted "
            f"label pulls with force δ instead of its whole residual. "
            if five
            else ""
        )
        + (
            f"On clean data the ratio is {clean[1]:.3g} ({clean[0].verdict} by Welch's test): "
            f"every residual is inside δ ≫ σ, where Huber is the ½-squared loss. "
            if clean
            else ""
        )
        + f"Huber measurably better: {names(helps)}. No measurable difference: {names(same)}. "
        f"Huber measurably worse: {names(hurts)}. The theory column is the estimators' "
        f"asymptotic error (theory §4); an unconverged Huber run says nothing about "
        f"robustness, which is why these runs train 6000 updates and average the iterates."
    )
