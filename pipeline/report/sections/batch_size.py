"""Batch size: Does batch size change the final model?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import stats, theory
from pipeline.report.data import Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import (
    base,
    effective_lr,
    floor_theory,
    log_ticks,
    mean_sd,
    seeds_label,
    spread,
    with_status,
)

SPEC = ("batch_size", "Batch size", "Does batch size change the final model?", "batch_size")

RULES = {"none": "lr 0.03", "sqrt": "lr·√(B/10)", "linear": "lr·B/10"}


def per_b(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """answers.json entries: per B, w_error mean and sd over the converged seeds."""
    out = {}
    for b, g in rows.groupby("B"):
        ok = g[g["status"] == "converged"]
        sm = stats.summarize(ok["w_error"])
        out[str(int(b))] = {
            "w_error_mean": sm["mean"],
            "w_error_sd": sm["sd"],
            "seeds": int(sm["seeds"]),
            "updates": int(g["updates"].iloc[0]),
            "left_out": int(len(g) - len(ok)),
        }
    return out


def noise_floor_cells(d: SweepData) -> pd.DataFrame:
    """Every constant-lr, converged cell of the sweep (clean data, MSE/½-squared, no
    averaging): RMS of w_error over seeds against √(floor² + OLS²) (theory §2)."""
    rows = d.select(outliers=0.0, schedule="constant", averaging="none", loss=["mse", "squared"])
    rows = rows[rows["reduction"].isin(["mean", "sum"]) & (rows["init"] == "normal")]
    rows = with_status(d, rows)
    out = []
    keys = ["loss", "reduction", "lr", "lr_scaling", "ref_B", "B", "n", "epochs", "min_updates"]
    for key, g in rows.groupby(keys):
        ok = g[g["status"] == "converged"]
        if len(ok) < 5 or len(ok) < len(g):  # a cell counts when all its seeds converged
            continue
        r = ok.iloc[0]
        th = floor_theory(r)
        if not math.isfinite(th):
            continue
        rms = stats.rms(ok["w_error"])
        out.append(
            {
                "loss": key[0],
                "reduction": key[1],
                "lr used": effective_lr(r),
                "B": int(r.B),
                "n": int(r.n),
                "updates": int(r.updates),
                "RMS w_error": rms,
                "theory √(floor²+OLS²)": th,
                "ratio": rms / th,
                "seeds": seeds_label(ok["seed"]),
                "run_ids": list(ok["run_id"]),
            }
        )
    # cells that differ only in how the update count was asked for train the same thing
    cols = ["loss", "reduction", "lr used", "B", "n", "updates"]
    return pd.DataFrame(out).drop_duplicates(cols) if out else pd.DataFrame(out)


def build(d: SweepData, s: Section, out: Path) -> None:
    common = base("epochs", "min_updates", lr=0.03, ref_B=10, model="linear", n=1000)
    epochs = d.select(**common, epochs=3, min_updates=0)
    epochs = s.use(with_status(d, need(epochs, varying="B")))
    updates = d.select(**common, lr_scaling="none", min_updates=3000)
    updates = s.use(with_status(d, updates)) if not updates.empty else updates

    eq_e = spread(epochs.assign(rule=epochs["lr_scaling"].map(RULES)), ["rule", "B"], "w_error")
    eq_e.insert(
        2, "updates", [int(epochs.loc[epochs["B"] == b, "updates"].iloc[0]) for b in eq_e["B"]]
    )
    s.tables.append(
        (
            "Equal epochs (3): final w_error over the converged seeds; diverged/unconverged runs "
            "are left out and counted.",
            eq_e[["rule", "B", "updates", "w_error (mean ± sd)", "seeds", "left out"]],
        )
    )
    s.answers = {"equal_epochs": per_b(epochs[epochs["lr_scaling"] == "none"])}
    text = []
    fixed = epochs[epochs["lr_scaling"] == "none"]
    by_b = {int(b): g for b, g in fixed.groupby("B")}

    def cell(b: int, g: pd.DataFrame) -> str:
        bad = int((g["status"] != "converged").sum())
        note = f" ({bad} of {len(g)} runs not converged)" if bad else ""
        ok = g.loc[g["status"] == "converged", "w_error"]
        return f"B={b}: {int(g['updates'].iloc[0])} updates, w_error {mean_sd(ok)}{note}"

    text.append(
        "At equal epochs a bigger batch mostly means fewer updates: "
        + "; ".join(cell(b, g) for b, g in sorted(by_b.items()))
        + ". That compares 3000 updates with 3: not an equal footing."
    )

    floor_rows = pd.DataFrame()
    if not updates.empty and updates["B"].nunique() > 1:
        eq_u = spread(updates, ["B"], "w_error")
        theo = []
        for b in eq_u["B"]:
            r = updates[updates["B"] == b].iloc[0]
            theo.append(floor_theory(r))
        eq_u["updates"] = [
            int(updates.loc[updates["B"] == b, "updates"].iloc[0]) for b in eq_u["B"]
        ]
        eq_u["theory √(floor²+OLS²)"] = theo
        eq_u["RMS / theory"] = eq_u["rms"] / eq_u["theory √(floor²+OLS²)"]
        ols = theory.ols_error(int(updates["d"].iloc[0]), 1000, float(updates["noise"].iloc[0]))
        s.tables.append(
            (
                f"Equal updates ({int(updates['updates'].iloc[0])}): the error left is SGD's noise "
                f"floor, √(d·v·(n−B)/(n−1) + OLS²), v = ησ²/(B − η(B+d+2)); OLS alone: {ols:.3g}.",
                eq_u[
                    [
                        "B",
                        "updates",
                        "w_error (mean ± sd)",
                        "rms",
                        "theory √(floor²+OLS²)",
                        "RMS / theory",
                        "seeds",
                        "left out",
                    ]
                ],
            )
        )
        s.answers["equal_updates"] = per_b(updates)
        # the rule: non-increasing in B (a rise inside the seeds' spread is no rise) until OLS
        means = eq_u.set_index("B")
        monotone = True
        groups = {int(b): g["w_error"] for b, g in updates.groupby("B")}
        bs = sorted(groups)
        for b1, b2 in zip(bs, bs[1:], strict=False):
            # a rise counts only when Welch's test on log w_error sees it
            if stats.compare(np.log(groups[b2]), np.log(groups[b1])).verdict == "a > b":
                monotone = False
        s.answers["equal_updates_monotone"] = monotone
        s.answers["ols_w_error_theory"] = ols
        text.append(
            "At equal updates the error "
            + ("falls with B" if monotone else "does NOT fall monotonically with B")
            + " until it reaches the OLS error: "
            + "; ".join(
                f"B={int(b)}: {r['w_error (mean ± sd)']} (theory {r['theory √(floor²+OLS²)']:.2g})"
                for b, r in means.iterrows()
            )
            + f". SGD with a constant lr stalls at a noise floor whose variance is ∝ η/B "
            f"(theory §2), so at a fixed lr a bigger batch ends closer to the least-squares "
            f"solution; once the floor is below the OLS error ({ols:.2g}) the data, not the "
            f"optimiser, sets the error. Scaling lr ∝ B (the linear scaling rule) keeps η/B "
            f"and so the floor fixed, until lr meets the stability bound (lr·B/10 at B=1000 is "
            f"lr 3: it diverges)."
        )
    floor_rows = noise_floor_cells(d)
    if not floor_rows.empty:
        within = bool(((floor_rows["ratio"] > 0.5) & (floor_rows["ratio"] < 2)).all())
        s.answers["noise_floor"] = {
            "cells": int(len(floor_rows)),
            "ratio_min": float(floor_rows["ratio"].min()),
            "ratio_max": float(floor_rows["ratio"].max()),
            "all_within_2x": within,
        }
        s.tables.append(
            (
                "Noise floor, every constant-lr cell of the sweep whose seeds all converged: "
                "RMS of w_error over seeds vs theory (ratio 1 = theory; reshuffled epochs sit "
                "somewhat below the formula).",
                floor_rows.drop(columns=["run_ids"]),
            )
        )
        s.run_ids = sorted(set(s.run_ids) | {r for ids in floor_rows["run_ids"] for r in ids})
        text.append(
            f"Measured noise floors are within 2× of theory in "
            f"{int(((floor_rows['ratio'] > 0.5) & (floor_rows['ratio'] < 2)).sum())} of "
            f"{len(floor_rows)} converged constant-lr cells (ratios "
            f"{floor_rows['ratio'].min():.2f}–{floor_rows['ratio'].max():.2f})."
        )

    fig, ax = new_figure()
    styles = {"lr 0.03": "o-", "lr·√(B/10)": "s--", "lr·B/10": "^:"}
    for rule, g in eq_e.groupby("rule"):
        g = g[np.isfinite(g["mean"])]
        ax.errorbar(
            g["B"],
            g["mean"],
            yerr=g["sd"].fillna(0),
            fmt=styles.get(rule, "o-"),
            capsize=3,
            label=f"3 epochs, {rule}",
        )
    if not updates.empty and updates["B"].nunique() > 1:
        ax.errorbar(
            eq_u["B"],
            eq_u["mean"],
            yerr=eq_u["sd"].fillna(0),
            fmt="D-",
            color="k",
            capsize=3,
            label=f"{int(updates['updates'].iloc[0])} updates, lr 0.03",
        )
        ax.plot(eq_u["B"], eq_u["theory √(floor²+OLS²)"], "k:", label="theory: floor + OLS")
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax, epochs["B"])
    ax.set(
        xlabel="batch size B",
        ylabel="final w_error (mean ± sd, 5 seeds)",
        title="error vs B: equal epochs and equal updates",
    )
    ax.legend(fontsize=8)
    s.figure = save(fig, out, s.key)
    s.answer = " ".join(text)
