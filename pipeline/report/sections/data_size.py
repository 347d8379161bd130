"""Data size: How does the error shrink with more data?"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.report.data import Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import BASE

SPEC = ("data_size", "Data size", "How does the error shrink with more data?", "data_size")


def build(d: SweepData, s: Section, out: Path) -> None:
    common = {k: v for k, v in BASE.items() if k not in ("n", "epochs", "min_updates")}
    rows = d.select(**common, lr=0.03, lr_scaling="none", B=10, seed=0, min_updates=3000)
    rows = need(rows, varying="n").sort_values("n")
    sigma = float(rows["noise"].iloc[0])
    rows = rows.assign(sigma_sqrt_n=sigma / np.sqrt(rows["n"]))
    s.table = rows[["n", "B", "updates", "w_error", "ols_w_error", "sigma_sqrt_n"]]
    ok = rows[~rows["diverged"]]
    slope = float(np.polyfit(np.log(ok["n"]), np.log(ok["w_error"]), 1)[0])
    ratio = float((ok["w_error"] / ok["ols_w_error"]).median())
    s.numbers = {"slope": slope, "median_ratio_to_ols": ratio}
    fig, ax = new_figure()
    ax.loglog(rows["n"], rows["w_error"], "o-", label="SGD w_error")
    ax.loglog(rows["n"], rows["ols_w_error"], "s--", label="closed-form OLS (floor)")
    ax.loglog(rows["n"], rows["sigma_sqrt_n"], "k:", label="σ/√n")
    ax.set(xlabel="n", ylabel="‖w − ŵ‖", title="error vs data size")
    ax.legend()
    s.figure = save(fig, out, s.key)
    s.answer = (
        f"Like σ/√n: the fitted slope of log w_error against log n is {slope:.2f} (−0.5 is the "
        f"statistical rate), and SGD's error is a median {ratio:.2g}× the closed-form least "
        f"squares floor on the same data, so past a few samples the noise, not the optimiser, "
        f"sets the error."
    )
