"""Learning rate: How do I find a good learning rate?"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pipeline.data import make_generators, with_bias_column
from pipeline.report.data import Section, SweepData, final, fmt, need, new_figure, save
from pipeline.report.sections.common import BASE
from pipeline.train import make_problem

SPEC = ("lr", "Learning rate", "How do I find a good learning rate?", "lr")


def build(d: SweepData, s: Section, out: Path) -> None:
    # d2l defaults but lr, trained by the two d2l codes (engine scratch / linear)
    rows = d.select(**BASE, B=10, lr_scaling="none", seed=0, engine=["scratch", "linear"])
    rows = need(rows, varying="lr")
    rows = rows.assign(final_mse=final(rows, "mse")).sort_values(["model", "lr"])
    s.table = rows.pivot_table(index="lr", columns="model", values="final_mse").map(fmt)
    stable = rows[~rows["diverged"]]
    largest = stable.groupby("model")["lr"].max()
    best = rows.loc[rows.groupby("model")["final_mse"].idxmin(), ["model", "lr"]]
    first_div = rows[rows["diverged"]]["lr"].min() if rows["diverged"].any() else math.nan
    # Plain gradient descent on a quadratic is stable iff lr * lambda_max(H) < 2, with H the
    # Hessian of the loss; for the MSE mean loss over A = [X, 1], H = (2/n) A^T A.
    cfg = d.config(rows["run_id"].iloc[0])
    p = make_problem(cfg, make_generators(cfg.seed))
    A = with_bias_column(p.X)
    lam = float(torch.linalg.eigvalsh(2 / len(A) * A.T @ A).max())
    bound = 2 / lam
    s.numbers = {
        "bound": bound,
        "lambda_max": lam,
        "first_diverged_lr": first_div,
        **{f"largest_stable_lr.{m}": float(v) for m, v in largest.items()},
    }
    fig, ax = new_figure()
    for model, g in rows.groupby("model"):
        ok = g[~g["diverged"]]
        ax.loglog(ok["lr"], ok["final_mse"], "o-", label=model)
        bad = g[g["diverged"]]
        top = ok["final_mse"].max() if not ok.empty else 1.0
        ax.scatter(bad["lr"], [top * 3] * len(bad), marker="x", color="red")
    ax.axvline(bound, color="k", ls="--", label=f"2/λmax = {bound:.3g}")
    ax.set(xlabel="lr", ylabel="final mse (x: diverged)", title="final mse vs lr")
    ax.legend()
    s.figure = save(fig, out, s.key)
    stable_txt = ", ".join(f"{m} {v:g}" for m, v in largest.items())
    best_txt = ", ".join(f"{r.model} {r.lr:g}" for r in best.itertuples())
    s.answer = (
        f"Sweep lr on a log scale and watch the final mse. Lowest final mse at lr: {best_txt}. "
        f"Largest stable lr seen: {stable_txt}; the smallest lr that diverged: {first_div:g}. "
        f"The analytic bound for plain gradient descent on this quadratic is lr < 2/λmax(H) = "
        f"{bound:.3g}, where H = (2/n)·AᵀA (A = [X, 1]) is the Hessian of the MSE and "
        f"λmax = {lam:.3g} is computed from the run's data; it is the right bound because the "
        f"loss is exactly quadratic. Minibatch SGD (B = {int(rows['B'].iloc[0])}) sees noisy "
        f"curvature, so its stable range ends near or below that bound."
    )
