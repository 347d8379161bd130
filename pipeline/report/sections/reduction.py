"""Mean vs sum reduction: Mean → sum reduction: how must lr change?"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.report.data import Section, SweepData, final, need, new_figure, save
from pipeline.report.sections.common import BASE

SPEC = (
    "reduction",
    "Mean vs sum reduction",
    "Mean → sum reduction: how must lr change?",
    "reduction",
)


def build(d: SweepData, s: Section, out: Path) -> None:
    common = {k: v for k, v in BASE.items() if k != "reduction"}
    rows = d.select(**common, lr=0.03, B=[10, 100], seed=0, engine=["scratch", "linear"])
    variant = rows["reduction"] + "/" + rows["lr_scaling"] + "/" + rows["ref_B"].astype(str)
    grids = {
        "mean/none/10": "reduction_mean",
        "sum/inverse/1": "reduction_sum_scaled",
        "sum/none/10": "reduction_sum_unscaled",
    }
    rows = need(rows.assign(grid=variant.map(grids)).dropna(subset=["grid"]), varying="grid")
    names = {
        "reduction_mean": "mean, lr",
        "reduction_sum_scaled": "sum, lr/B",
        "reduction_sum_unscaled": "sum, lr",
    }
    rows = rows.assign(variant=rows["grid"].map(names), final_mse=final(rows, "mse"))
    s.table = (
        rows[["model", "B", "variant", "lr", "final_mse", "updates"]]
        .sort_values(["model", "B", "variant"])
        .rename(columns={"final_mse": "mse"})
    )
    deltas, rel = [], []
    curves: dict[str, list[float]] = {}
    for (model, b), g in rows.groupby(["model", "B"]):
        by = {r.grid: r.run_id for r in g.itertuples()}
        if {"reduction_mean", "reduction_sum_scaled"} <= set(by):
            for key in ("mse", "w_error", "b_error"):
                m = np.array(d.history(by["reduction_mean"], key))
                sc = np.array(d.history(by["reduction_sum_scaled"], key))
                deltas.append(float(np.max(np.abs(m - sc))))
                rel.append(float(np.max(np.abs(m - sc) / np.abs(m))))
        if not curves:
            curves = {names[k]: d.history(v, "mse") for k, v in by.items()}
            label = f"{model}, B={b}"
    s.numbers = {
        "max_abs_delta": max(deltas, default=math.nan),
        "max_rel_delta": max(rel, default=math.nan),
    }
    unscaled = rows[rows["grid"] == "reduction_sum_unscaled"]
    fig, ax = new_figure()
    for name, c in curves.items():
        ax.semilogy(range(len(c)), c, "o-", label=name)
    ax.set(xlabel="epoch", ylabel="mse", title=f"mean vs sum ({label})")
    ax.legend()
    s.figure = save(fig, out, s.key)
    bad = "; ".join(
        f"{r.model} B={int(r.B)}: "
        + (f"diverged at update {int(r.diverged_at)}" if r.diverged else f"mse {r.final_mse:.3g}")
        for r in unscaled.itertuples()
    )
    s.answer = (
        f"Divide lr by B. With reduction='sum' the gradient is B times the mean's, so sum with "
        f"lr/B takes exactly the mean's steps: the largest |Δ| between the two over every "
        f"epoch's mse, w_error and b_error of {len(deltas) // 3} pairs of runs is "
        f"{s.numbers['max_abs_delta']:.2g} (relative {s.numbers['max_rel_delta']:.2g}). "
        f"Unscaled, sum is lr·B in disguise: {bad}."
    )
