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


def floor_draws(d: SweepData, row: Any) -> tuple[float, float]:
    """(mean square of w_error over the run's epoch ends at its floor, the floor theory's
    mean square for this run's data). A run at its floor draws a new error every epoch: all
    draws after the transient (theory.updates_to_floor) count, not only the last; the OLS part
    is the run's own logged ols_w_error (it is fixed per data set), the SGD part d·v·(n−B)/(n−1)
    times the reshuffling factor of epochs that partition the data (theory §2)."""
    lr, d_, n, b = effective_lr(row), int(row.d), int(row.n), int(row.B)
    history = d.steps(row.run_id, "w_error")
    first = theory.updates_to_floor(
        lr, b, n, d_, float(row.noise), history[0][1], row.loss, row.reduction
    )
    per_epoch = -(-n // b)
    # at the floor by theory's transient (its fastest-mode estimate) and in the run's second
    # half (slow modes near the stability bound take longer than that estimate)
    last = history[-1][0]
    draws = [v for e, v in history if e * per_epoch >= first and 2 * e >= last]
    draws = draws or [history[-1][1]]
    eta = theory.effective_lr(lr, row.loss, row.reduction, b)
    sgd = d_ * theory.noise_floor_var(lr, b, d_, float(row.noise), n, row.loss, row.reduction)
    sgd *= theory.reshuffle_factor(eta, n, b) if b < n else 1.0
    return float(np.mean(np.square(draws))), sgd + float(row.ols_w_error) ** 2


def noise_floor_cells(d: SweepData) -> pd.DataFrame:
    """Every constant-lr, converged cell of the sweep (clean data, MSE/½-squared, no
    averaging): the RMS of w_error at the floor over seeds against theory §2."""
    rows = d.select(
        source="memory",  # the floor's reshuffling theory is for the same n examples each epoch
        outliers=0.0,
        schedule="constant",
        averaging="none",
        loss=["mse", "squared"],
        dtype="float64",
        weight_decay=0.0,  # the floor theory has no weight decay ...
        zero_features=0,  # ... and assumes few features against n
    )
    rows = rows[rows["reduction"].isin(["mean", "sum"]) & (rows["init"] == "normal")]
    out = []
    keys = ["loss", "reduction", "lr", "lr_scaling", "ref_B", "B", "n", "epochs", "min_updates"]
    for _, g in rows.groupby(keys):
        ok = g[g["status"] == "converged"]
        if len(ok) < 5 or len(ok) < len(g):  # a cell counts when all its seeds converged
            continue
        r = ok.iloc[0]
        if not math.isfinite(floor_theory(r)):
            continue
        pairs = [floor_draws(d, run) for run in ok.itertuples()]
        measured = math.sqrt(np.mean([m for m, _ in pairs]))
        expected = math.sqrt(np.mean([t for _, t in pairs]))
        ratio, within = stats.within_factor(measured, expected, 2.0)
        out.append(
            {
                "loss": r.loss,
                "reduction": r.reduction,
                "lr used": effective_lr(r),
                "B": int(r.B),
                "n": int(r.n),
                "updates": int(r.updates),
                "RMS w_error at the floor": measured,
                "theory √(floor·R + OLS²)": expected,
                "ratio": ratio,
                "within 2×": within,
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
    updates = d.select(**common, lr_scaling="none", min_updates=3000)
    if epochs.empty or epochs["B"].nunique() < 2:
        epochs = epochs.iloc[:0]
    need(updates if epochs.empty else epochs, varying="B")
    s.answers = {}
    text = []
    if not epochs.empty:
        epochs = s.use(epochs)
        eq_e = spread(epochs.assign(rule=epochs["lr_scaling"].map(RULES)), ["rule", "B"], "w_error")
        eq_e.insert(
            2, "updates", [int(epochs.loc[epochs["B"] == b, "updates"].iloc[0]) for b in eq_e["B"]]
        )
        s.tables.append(
            (
                "Equal epochs (3): final w_error over the converged seeds; diverged/unconverged "
                "runs are left out and counted.",
                eq_e[["rule", "B", "updates", "w_error (mean ± sd)", "seeds", "left out"]],
            )
        )
        s.answers["equal_epochs"] = per_b(epochs[epochs["lr_scaling"] == "none"])
        fixed = epochs[epochs["lr_scaling"] == "none"]
        by_b = {int(b): g for b, g in fixed.groupby("B")}

        def cell(b: int, g: pd.DataFrame) -> str:
            bad = int((g["status"] != "converged").sum())
            note = f" ({bad} of {len(g)} runs not converged)" if bad else ""
            ok = g.loc[g["status"] == "converged", "w_error"]
            return f"B={b}: {int(g['updates'].iloc[0])} updates, w_error {mean_sd(ok)}{note}"

        most, least = max(by_b), min(by_b)
        text.append(
            "At equal epochs a bigger batch mostly means fewer updates: "
            + "; ".join(cell(b, g) for b, g in sorted(by_b.items()))
            + f". That compares {int(by_b[least]['updates'].iloc[0])} updates with "
            f"{int(by_b[most]['updates'].iloc[0])}: not an equal footing."
        )
    if not updates.empty:
        updates = s.use(updates)

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
        groups = {  # the converged seeds, as in the table
            int(b): g.loc[g["status"] == "converged", "w_error"] for b, g in updates.groupby("B")
        }
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
        within = bool(floor_rows["within 2×"].all())
        s.answers["noise_floor"] = {
            "cells": int(len(floor_rows)),
            "ratio_min": float(floor_rows["ratio"].min()),
            "ratio_max": float(floor_rows["ratio"].max()),
            "all_within_2x": within,
        }
        s.tables.append(
            (
                "Noise floor, every constant-lr cell of the sweep whose seeds all converged: "
                "RMS of w_error at the floor over seeds vs theory, √(d·v·(n−B)/(n−1)·R + OLS²) "
                "with R the reshuffled-epochs factor and OLS each run's own (ratio 1 = theory).",
                floor_rows.drop(columns=["run_ids"]),
            )
        )
        s.run_ids = sorted(set(s.run_ids) | {r for ids in floor_rows["run_ids"] for r in ids})
        text.append(
            f"Measured noise floors (RMS of the epoch-end errors once a run is at its floor, over "
            f"the seeds) are within 2× of theory in {int(floor_rows['within 2×'].sum())} of "
            f"{len(floor_rows)} converged constant-lr cells (ratios "
            f"{floor_rows['ratio'].min():.2f}–{floor_rows['ratio'].max():.2f})."
        )

    fig, ax = new_figure()
    styles = {"lr 0.03": "o-", "lr·√(B/10)": "s--", "lr·B/10": "^:"}
    for rule, g in eq_e.groupby("rule") if not epochs.empty else []:
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
    log_ticks(ax, pd.concat([epochs["B"], updates["B"]]))
    ax.set(
        xlabel="batch size B",
        ylabel="final w_error (mean ± sd, 5 seeds)",
        title="error vs B: equal epochs and equal updates",
    )
    ax.legend(fontsize=8)
    s.figure = save(fig, out, s.key)
    s.answer = " ".join(text)
