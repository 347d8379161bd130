"""Learning rate: How do I find a good learning rate?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import stats, theory
from pipeline.data import make_generators
from pipeline.report.data import MissingRuns, Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import base, log_ticks, mean_sd, seeds_label
from pipeline.train import make_problem

SPEC = ("lr", "Learning rate", "How do I find a good learning rate?", "lr")

# the full-batch stability runs: (loss, reduction) -> answers.json key
VARIANTS = {
    ("mse", "mean"): "mse-mean",
    ("squared", "mean"): "squared-mean",
    ("mse", "sum"): "mse-sum",
}


def sgd_table(d: SweepData, s: Section) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Minibatch SGD as d2l trains it (B = 10, 3 epochs), final mse over seeds per lr."""
    rows = d.select(**base(), B=10, lr_scaling="none", model="linear")
    rows = s.use(need(rows, varying="lr"))
    table = []
    for lr, g in rows.groupby("lr"):
        ok = g[~g["diverged"]]
        table.append(
            {
                "lr": lr,
                "final mse (mean ± sd)": mean_sd(ok["mse"]),
                "mean": float(np.mean(ok["mse"])) if len(ok) else math.inf,
                "diverged": f"{int(g['diverged'].sum())}/{len(g)}",
                "unconverged": int((g["status"] == "unconverged").sum()),
                "seeds": seeds_label(g["seed"]),
            }
        )
    return rows, pd.DataFrame(table)


def stability(d: SweepData, s: Section) -> pd.DataFrame:
    """Full-batch GD near its bound: per variant and seed, the largest stable lr of the grid
    against 2/λmax of that seed's data (scaled for the loss and reduction)."""
    rows = d.select(source="memory", B=1000, n=1000, epochs=200, outliers=0.0, lr_scaling="none")
    rows = rows[rows["schedule"] == "constant"]
    if rows.empty:
        raise MissingRuns
    s.use(rows)
    out = []
    for (loss, red, seed), g in rows.groupby(["loss", "reduction", "seed"]):
        if (loss, red) not in VARIANTS or g["lr"].nunique() < 3:
            continue
        cfg = d.config(g["run_id"].iloc[0])
        X = make_problem(cfg, make_generators(int(seed))).X
        bound = theory.full_batch_bound(X, loss, red, batch_size=1000)
        grid = sorted(g["lr"])
        stable = g.loc[~g["diverged"], "lr"]
        measured = float(stable.max()) if len(stable) else math.nan
        above = [lr for lr in grid if lr > measured]
        below = [lr for lr in grid if lr < measured]
        nxt = above[0] if above else math.inf
        prev = below[-1] if below else 0.0
        out.append(
            {
                "variant": VARIANTS[loss, red],
                "seed": int(seed),
                "largest stable lr": measured,
                "first diverging lr": nxt,
                "theory 2/λmax (scaled)": bound,
                # the bound lies within one grid step of the largest stable lr, below the
                # first diverging one (just above the bound, growth is too slow to show in
                # 200 updates: the largest stable lr may exceed the bound by < one step)
                "within grid resolution": bool(prev < bound < nxt),
            }
        )
    return pd.DataFrame(out)


def build(d: SweepData, s: Section, out: Path) -> None:
    rows, table = sgd_table(d, s)
    s.tables.append(
        (
            "Minibatch SGD (B = 10, 3 epochs, MSE mean): final full-data mse over seeds; "
            "diverged runs are left out of the mean and counted, unconverged ones are in it: "
            "the table shows what 3 epochs reach at each lr, settled or not.",
            table.drop(columns=["mean"]),
        )
    )
    stable_lrs = table[table["diverged"].str.startswith("0/")]
    best = stable_lrs.loc[stable_lrs["mean"].idxmin()] if len(stable_lrs) else None
    # lrs whose final mse is not measurably different from the best (Welch, log scale)
    near: list[float] = []
    if best is not None:
        best_mse = np.log(rows.loc[rows["lr"] == best["lr"], "mse"])
        for lr in stable_lrs["lr"]:
            other = np.log(rows.loc[(rows["lr"] == lr) & ~rows["diverged"], "mse"])
            if not stats.compare(other, best_mse).differs:
                near.append(float(lr))
    first_div = table.loc[~table["diverged"].str.startswith("0/"), "lr"]
    sgd_stable_max = float(stable_lrs["lr"].max()) if len(stable_lrs) else math.nan
    mb_bound = theory.minibatch_bound(int(rows["d"].iloc[0]), 10)

    try:
        stab = stability(d, s)
    except MissingRuns:  # a sweep without the full-batch cells: the SGD part still answers
        stab = pd.DataFrame()
    answers: dict[str, Any] = {"max_stable_theory": {}, "max_stable_measured": {}}
    lines = []
    if not stab.empty:
        per = stab.groupby("variant")
        summary = per.agg(
            theory=("theory 2/λmax (scaled)", "mean"),
            measured=("largest stable lr", "mean"),
            first_diverging=("first diverging lr", "mean"),
            matches=("within grid resolution", "all"),
            seeds=("seed", lambda x: seeds_label(x)),
        )
        summary["measured / theory"] = summary["measured"] / summary["theory"]
        s.tables.append(
            (
                "Full-batch gradient descent (B = n = 1000, 200 updates) on a 5% lr grid: the "
                "largest stable lr per seed against that seed's 2/λmax(H) (mean over seeds).",
                summary.reset_index(),
            )
        )
        answers["max_stable_theory"] = {k: float(v) for k, v in summary["theory"].items()}
        answers["max_stable_measured"] = {k: float(v) for k, v in summary["measured"].items()}
        answers["bound_within_grid_resolution"] = {
            k: bool(v) for k, v in summary["matches"].items()
        }
        th = summary["theory"]
        if {"mse-mean", "squared-mean"} <= set(th.index):
            answers["squared_over_mse_measured"] = float(
                summary.loc["squared-mean", "measured"] / summary.loc["mse-mean", "measured"]
            )
        if {"mse-mean", "mse-sum"} <= set(th.index):
            answers["mean_over_sum_measured"] = float(
                summary.loc["mse-mean", "measured"] / summary.loc["mse-sum", "measured"]
            )
        verdict = (
            "inside the grid's 5% resolution for every seed"
            if summary["matches"].all()
            else "NOT inside the grid's resolution for "
            + ", ".join(summary.index[~summary["matches"]])
        )
        lines.append(
            f"The stability bound, checked where it is exact (full-batch gradient descent on "
            f"this quadratic): MSE mean is stable iff lr < 2/λmax(H), H = (2/n)ZᵀZ, theory "
            f"{th.get('mse-mean', math.nan):.3g} (mean over seeds), measured largest stable "
            f"{summary['measured'].get('mse-mean', math.nan):.3g}; d2l's ½-squared loss halves "
            f"H, so its bound doubles: theory {th.get('squared-mean', math.nan):.3g}, measured "
            f"{summary['measured'].get('squared-mean', math.nan):.3g} "
            f"({answers.get('squared_over_mse_measured', math.nan):.3g}× the MSE one); a sum "
            f"over the batch multiplies the gradient by B = {1000}, so its bound is divided by "
            f"B: theory {th.get('mse-sum', math.nan):.3g}, measured "
            f"{summary['measured'].get('mse-sum', math.nan):.3g}. Theory vs measurement: "
            f"{verdict}."
        )
    s.answers = answers
    s.numbers = {
        "sgd_largest_stable_lr": sgd_stable_max,
        "sgd_first_diverged_lr": float(first_div.min()) if len(first_div) else math.nan,
        "minibatch_bound": mb_bound,
    }
    answers["sgd"] = {
        "best_lr": float(best["lr"]) if best is not None else math.nan,
        "lrs_as_good_as_best": near,
        "largest_stable_lr": sgd_stable_max,
        "minibatch_mean_square_bound": mb_bound,
    }

    fig, ax = new_figure()
    ok = table[np.isfinite(table["mean"])]
    sds = [
        float(np.std(rows.loc[(rows["lr"] == lr) & ~rows["diverged"], "mse"], ddof=1))
        if ((rows["lr"] == lr) & ~rows["diverged"]).sum() > 1
        else 0.0
        for lr in ok["lr"]
    ]
    ax.errorbar(ok["lr"], ok["mean"], yerr=sds, fmt="o-", capsize=3, label="SGD B=10, mean ± sd")
    bad = table[~table["diverged"].str.startswith("0/")]
    top = float(ok["mean"].max()) if len(ok) else 1.0
    ax.scatter(bad["lr"], [top * 3] * len(bad), marker="x", color="red", label="diverged")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if "max_stable_theory" in answers and "mse-mean" in answers["max_stable_theory"]:
        ax.axvline(
            answers["max_stable_theory"]["mse-mean"],
            color="k",
            ls="--",
            label="full-batch bound 2/λmax",
        )
    ax.axvline(mb_bound, color="gray", ls=":", label="mean-square bound, B=10")
    log_ticks(ax, table["lr"])
    ax.tick_params(axis="x", labelrotation=45)
    ax.set(xlabel="lr", ylabel="final mse", title="final mse vs lr (5 seeds)")
    ax.legend(fontsize=8)
    s.figure = save(fig, out, s.key)

    best_txt = (
        f"lr {best['lr']:g} gives the lowest mean final mse ({best['final mse (mean ± sd)']}, "
        f"{best['seeds']} seeds); lrs with no measurable difference from it (Welch's t-test on "
        f"log mse, p ≥ 0.05): {', '.join(f'{x:g}' for x in near)}"
        if best is not None
        else "no lr was stable for every seed"
    )
    s.answer = " ".join(
        [
            f"Sweep lr on a log scale and read the final loss over seeds. For d2l's SGD "
            f"(B = 10, 3 epochs): {best_txt}. Too small an lr has not converged in 3 epochs; "
            f"the largest lr stable for every seed is {sgd_stable_max:g}, the smallest that "
            f"diverged is {s.numbers['sgd_first_diverged_lr']:g}. Minibatch noise lowers the "
            f"bound below full-batch gradient descent's: the mean-square bound for B = 10 is "
            f"{mb_bound:.2g} (theory §1), and single runs survive somewhat above it for 3 epochs.",
            *lines,
        ]
    )
