"""``python -m pipeline.report [--sweep latest|<parent run id>] [--out DIR]``: the FAQ report.

Reads a sweep's runs back from MLflow (``mlflow.search_runs`` into pandas) and writes one
section per question: the question, a table, a plot and a short answer whose every number is
computed from the runs (or, for the two numeric checks, from the sweep's own data). The
markdown, an HTML page and the PNGs are logged to the sweep's parent run under ``report/``,
and the markdown is printed.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pipeline.config import register_configs  # noqa: E402
from pipeline.data import make_generators, with_bias_column  # noqa: E402
from pipeline.tracking import latest_sweep, load_run_config, tracking_uri  # noqa: E402
from pipeline.train import init_params, make_problem, train  # noqa: E402


@dataclass
class Section:
    key: str  # file stem of its plot
    title: str
    question: str
    preset: str  # the preset whose runs it needs ("" = it needs none)
    table: pd.DataFrame | None = None
    answer: str = ""
    figure: str | None = None  # PNG file name in the output folder
    numbers: dict[str, float] = field(default_factory=dict)  # the figures quoted in the answer
    missing: bool = False


class SweepData:
    """The runs of one sweep: one row per job (grid, overrides, config hash) joined with the
    newest FINISHED run of that config in the experiment (cached runs included)."""

    def __init__(self, client: mlflow.MlflowClient, parent: Run):
        self.client, self.parent = client, parent
        exp_id = parent.info.experiment_id
        with tempfile.TemporaryDirectory() as tmp:
            jobs = json.loads(
                Path(client.download_artifacts(parent.info.run_id, "jobs.json", tmp)).read_text()
            )
        runs = mlflow.search_runs(
            experiment_ids=[exp_id],
            filter_string="attributes.status = 'FINISHED'",
            max_results=100_000,
            output_format="pandas",
        )
        assert isinstance(runs, pd.DataFrame)
        if runs.empty or "tags.config_hash" not in runs:
            runs = pd.DataFrame(columns=["run_id", "start_time", "tags.config_hash"])
        runs = runs.sort_values("start_time").drop_duplicates("tags.config_hash", keep="last")
        df = pd.DataFrame(jobs).merge(
            runs, left_on="config_hash", right_on="tags.config_hash", how="inner"
        )
        self.df = (
            df.assign(
                model=df.get("params.model.name"),
                loss=df.get("params.loss.name"),
                reduction=df.get("params.loss.reduction"),
                init=df.get("params.init.name"),
                lr=pd.to_numeric(df.get("params.optim.lr")),
                B=pd.to_numeric(df.get("params.train.batch_size")),
                n=pd.to_numeric(df.get("params.data.n")),
                seed=pd.to_numeric(df.get("params.seed")),
                noise=pd.to_numeric(df.get("params.data.noise")),
                drop_last=df.get("params.train.drop_last") == "True",
                data=np.where(
                    pd.to_numeric(df.get("params.data.outliers.fraction")) > 0, "outliers", "clean"
                ),
                diverged=df.get("tags.diverged") == "true",
                mse=df.get("metrics.mse"),
                w_error=df.get("metrics.w_error"),
                b_error=df.get("metrics.b_error"),
                updates=df.get("metrics.updates"),
                ols_w_error=df.get("metrics.ols_w_error"),
                diverged_at=df.get("metrics.diverged_at_step"),
            )
            if not df.empty
            else df
        )

    def grid(self, *names: str) -> pd.DataFrame:
        return self.df[self.df["grid"].isin(names)] if not self.df.empty else self.df

    def history(self, run_id: str, key: str) -> list[float]:
        return [
            m.value
            for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)
        ]

    def config(self, run_id: str) -> DictConfig:
        return load_run_config(self.client, run_id)


class MissingRuns(Exception):
    """The sweep has no runs for a section: it prints the preset that produces them."""


def need(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty:
        raise MissingRuns
    return rows


def fmt(x: float) -> str:
    return "diverged" if x is None or not math.isfinite(x) else f"{x:.3g}"


def final(rows: pd.DataFrame, key: str) -> pd.Series:
    """A final metric, inf for a diverged run (its last logged value is not a result)."""
    return rows[key].where(~rows["diverged"], math.inf)


def new_figure() -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


# --- the sections -----------------------------------------------------------------------------


def section_lr(d: SweepData, s: Section, out: Path) -> None:
    rows = need(d.grid("lr"))
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


def section_batch_size(d: SweepData, s: Section, out: Path) -> None:
    rules = {
        "batch_size": "lr 0.03",
        "batch_size_sqrt_lr": "lr·√(B/10)",
        "batch_size_linear_lr": "lr·B/10",
    }
    rows = need(d.grid(*rules))
    rows = rows.assign(
        rule=rows["grid"].map(rules), final_w=final(rows, "w_error"), final_mse=final(rows, "mse")
    )
    s.table = (
        rows[["rule", "B", "lr", "updates", "final_mse", "final_w"]]
        .sort_values(["rule", "B"])
        .rename(columns={"final_mse": "mse", "final_w": "w_error"})
    )
    seeds = d.grid("seeds_batch_size")
    spread = (
        seeds.groupby("B")["w_error"].agg(["mean", "std", "count"])
        if not seeds.empty
        else pd.DataFrame()
    )
    fig, ax = new_figure()
    for rule, g in rows.groupby("rule"):
        g = g[np.isfinite(g["final_w"])].sort_values("B")
        ax.loglog(g["B"], g["final_w"], "o-", label=rule)
    if not spread.empty:
        ax.errorbar(
            spread.index,
            spread["mean"],
            yerr=spread["std"],
            fmt="none",
            ecolor="k",
            capsize=4,
            label="lr 0.03, ±1 sd over seeds",
        )
    ax.set(xlabel="batch size B", ylabel="final w_error", title="3 epochs: error vs B")
    ax.legend()
    s.figure = save(fig, out, s.key)
    fixed = rows[rows["rule"] == "lr 0.03"].set_index("B")
    parts = [f"B={b}: {fmt(r.final_w)} after {int(r.updates)} updates" for b, r in fixed.iterrows()]
    s.numbers = {f"w_error.fixed.B{int(b)}": float(r.final_w) for b, r in fixed.iterrows()}
    best_scaled = rows[rows["rule"] != "lr 0.03"]
    spread_txt = ""
    if not spread.empty:
        spread_txt = (
            " Over seeds 0..4 at lr 0.03: "
            + "; ".join(
                f"B={int(b)}: {r['mean']:.3g} ± {r['std']:.2g}" for b, r in spread.iterrows()
            )
            + "."
        )
        s.numbers.update(
            {f"w_error.seeds.B{int(b)}": float(r["mean"]) for b, r in spread.iterrows()}
        )
    scaled_txt = "; ".join(
        f"{r.rule} B={int(r.B)}: {fmt(r.final_w)}"
        for r in best_scaled.sort_values(["rule", "B"]).itertuples()
    )
    s.answer = (
        f"At a fixed lr and 3 epochs, a bigger batch mostly means fewer updates: final w_error "
        f"{'; '.join(parts)}. Scaling the lr with B recovers much of the gap until the step "
        f"passes the stability bound: {scaled_txt}.{spread_txt} For this convex problem the "
        f"batch size changes how fast you get there (and the noise floor of SGD), not where."
    )


def section_reduction(d: SweepData, s: Section, out: Path) -> None:
    rows = need(d.grid("reduction_mean", "reduction_sum_scaled", "reduction_sum_unscaled"))
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


def section_per_sample(d: SweepData, s: Section, out: Path) -> None:
    from torch.func import functional_call, grad, vmap

    cfg = d.config(need(d.df)["run_id"].iloc[0])
    p = make_problem(cfg, make_generators(cfg.seed))
    w0, b0 = init_params(cfg, len(p.true_w), make_generators(cfg.seed).init)
    net = torch.nn.Linear(len(w0), 1, dtype=w0.dtype)
    params = {"weight": w0.reshape(1, -1).clone(), "bias": b0.reshape(1).clone()}
    X, y = p.X[:10], p.y[:10]

    def sample_loss(prm: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ((functional_call(net, prm, (x.unsqueeze(0),)) - t.unsqueeze(0)) ** 2).mean()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, X, y)
    batch = grad(lambda prm: ((functional_call(net, prm, (X,)) - y) ** 2).mean())(params)
    diffs = {k: float((per_sample[k].mean(0) - batch[k]).abs().max()) for k in params}
    s.table = pd.DataFrame(
        {
            "parameter": list(params),
            "grad of batch mean loss": [batch[k].reshape(-1).tolist() for k in params],
            "mean of per-sample grads": [
                per_sample[k].mean(0).reshape(-1).tolist() for k in params
            ],
            "max |Δ|": [diffs[k] for k in params],
        }
    )
    s.numbers = {"max_abs_delta": max(diffs.values())}
    s.answer = (
        f"Yes. Differentiation is linear, so the gradient of the batch's mean loss is the mean "
        f"of the per-sample gradients. Checked numerically on the first batch of the sweep's "
        f"data at the initial weights (per-sample gradients with torch.func.vmap(grad)): the "
        f"largest difference is {s.numbers['max_abs_delta']:.2g} ({cfg.train.dtype.value} "
        f"rounding)."
    )


def section_loss(d: SweepData, s: Section, out: Path) -> None:
    rows = need(d.grid("loss"))
    table = rows.pivot_table(index="loss", columns="data", values=["w_error", "b_error"])
    table.columns = [f"{metric} ({data})" for metric, data in table.columns]
    s.table = table
    seeds = d.grid("seeds_loss")
    fig, ax = new_figure()
    pivot = rows.pivot_table(index="loss", columns="data", values="w_error")
    pivot.plot.bar(ax=ax, logy=True, rot=0)
    ax.set(ylabel="final w_error", title="loss vs data")
    s.figure = save(fig, out, s.key)
    out_w = pivot["outliers"] if "outliers" in pivot else pd.Series(dtype=float)
    clean_w = pivot["clean"] if "clean" in pivot else pd.Series(dtype=float)
    s.numbers = {
        f"w_error.{data}.{loss}": float(v)
        for data, col in (("outliers", out_w), ("clean", clean_w))
        for loss, v in col.items()
    }
    txt = []
    if "huber" in out_w and "mse" in out_w:
        txt.append(
            f"With 5% outliers Huber's w_error is {out_w['huber']:.3g} against MSE's "
            f"{out_w['mse']:.3g} ({out_w['mse'] / out_w['huber']:.3g}× smaller): "
            f"beyond δ its gradient is capped, so a corrupted label pulls with force δ "
            f"instead of its whole residual."
        )
    if "huber" in clean_w and "mse" in clean_w:
        txt.append(
            f"On clean data Huber gives {clean_w['huber']:.3g} against MSE's "
            f"{clean_w['mse']:.3g}: the capped gradient also slows the start, when "
            f"every residual is large."
        )
    if not seeds.empty:
        agg = seeds.groupby(["data", "loss"])["w_error"].agg(["mean", "std"])
        txt.append(
            "Over seeds 0..4: "
            + "; ".join(
                f"{data}/{loss} {r['mean']:.3g} ± {r['std']:.2g}"
                for (data, loss), r in agg.iterrows()
            )
            + "."
        )
    s.answer = " ".join(txt)


def section_init(d: SweepData, s: Section, out: Path) -> None:
    rows = need(d.grid("init"))
    s.table = rows.pivot_table(index="init", columns="model", values="w_error")
    fig, ax = new_figure()
    for r in rows.itertuples():
        ax.semilogy(d.history(r.run_id, "w_error"), "o-", label=f"{r.init} ({r.model})")
    ax.set(xlabel="epoch", ylabel="w_error", title="initialisation")
    ax.legend()
    s.figure = save(fig, out, s.key)
    by_init = rows.groupby("init")["w_error"].max()
    s.numbers = {f"w_error.{k}": float(v) for k, v in by_init.items()}
    s.answer = (
        "Yes. The loss is convex in (w, b) with a single minimum, and a linear model with one "
        "output has no hidden units whose symmetry zeros would fail to break, so every start "
        "reaches the same point. Worst final w_error per init: "
        + ", ".join(f"{k} {v:.3g}" for k, v in by_init.items())
        + "."
    )


def section_data_size(d: SweepData, s: Section, out: Path) -> None:
    rows = need(d.grid("data_size").sort_values("n"))
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


def section_newton(d: SweepData, s: Section, out: Path) -> None:
    df = need(d.df)
    rows = need(df[(df["n"] == 1000) & ~df["diverged"] & (df["loss"] == "mse")])
    default = rows[(rows["lr"] == 0.03) & (rows["B"] == 10)]  # d2l's settings, if swept
    run = default.iloc[0] if not default.empty else rows.loc[rows["w_error"].idxmin()]
    cfg = d.config(run["run_id"])
    p = make_problem(cfg, make_generators(cfg.seed))
    w0, b0 = init_params(cfg, len(p.true_w), make_generators(cfg.seed).init)
    A = with_bias_column(p.X)
    theta0 = torch.cat([w0, b0.reshape(1)])

    def newton() -> torch.Tensor:
        g = 2 / len(A) * A.T @ (A @ theta0 - p.y.reshape(-1))
        H = 2 / len(A) * A.T @ A
        return theta0 - torch.linalg.solve(H, g)

    t_newton = timed(newton)
    theta = newton()
    t_sgd = timed(lambda: train(cfg), repeat=1)
    w_err = float(torch.linalg.vector_norm(theta[:-1] - p.true_w))
    s.numbers = {
        "newton_w_error": w_err,
        "sgd_w_error": float(run["w_error"]),
        "newton_s": t_newton,
        "sgd_s": t_sgd,
    }
    s.table = pd.DataFrame(
        {
            "method": ["one Newton step", f"SGD ({run['tags.mlflow.runName']})"],
            "w_error": [w_err, float(run["w_error"])],
            "seconds": [t_newton, t_sgd],
        }
    )
    d_ = A.shape[1]
    s.answer = (
        f"For this quadratic, one Newton step from the initial weights lands on the least "
        f"squares solution: w_error {w_err:.3g} against SGD's {run['w_error']:.3g}, in "
        f"{t_newton * 1e3:.2g} ms against {t_sgd * 1e3:.3g} ms. That is the exception: Newton "
        f"needs the d×d Hessian (here d = {d_}; for a network d is millions, so O(d²) memory and "
        f"O(d³) solves), the loss of a real model is not quadratic, and, as the FAQ says, "
        f"we care about where the optimiser ends up more than how fast."
    )


def section_partial_batch(d: SweepData, s: Section, out: Path) -> None:
    rows = need(d.grid("partial_batch"))
    rows = rows.assign(
        updates_per_epoch=rows["updates"] / pd.to_numeric(rows["params.train.epochs"])
    )
    s.table = rows[["model", "B", "drop_last", "updates_per_epoch", "w_error", "mse"]].sort_values(
        ["model", "B", "drop_last"]
    )
    fig, ax = new_figure()
    pivot = rows.pivot_table(index="B", columns="drop_last", values="w_error")
    pivot.plot.bar(ax=ax, logy=True, rot=0)
    ax.set(ylabel="final w_error", title="partial last batch: keep or drop")
    s.figure = save(fig, out, s.key)
    upe = rows.groupby(["B", "drop_last"])["updates_per_epoch"].first()
    s.numbers = {
        f"w_error.B{int(b)}.{'drop' if dl else 'keep'}": float(v)
        for (b, dl), v in rows.groupby(["B", "drop_last"])["w_error"].mean().items()
    }
    s.answer = (
        "n = 1000 is not a multiple of B: keeping the last batch gives "
        + ", ".join(
            f"B={int(b)}: {int(v)} updates per epoch" for (b, dl), v in upe.items() if not dl
        )
        + "; drop_last gives "
        + ", ".join(f"B={int(b)}: {int(v)}" for (b, dl), v in upe.items() if dl)
        + ". The partial batch is averaged over its real length (d2l's sgd divides by the "
        "nominal B, which shrinks that step). Mean final w_error: "
        + ", ".join(
            f"B={k.split('.')[1][1:]} {k.split('.')[2]} {v:.3g}" for k, v in s.numbers.items()
        )
        + ": dropping throws away data each epoch (a different random tail each time), "
        "keeping it costs nothing when the mean is taken correctly."
    )


SECTIONS: list[tuple[str, str, str, str, Callable[[SweepData, Section, Path], None]]] = [
    ("lr", "Learning rate", "How do I find a good learning rate?", "lr", section_lr),
    (
        "batch_size",
        "Batch size",
        "Does batch size change the final model?",
        "batch_size",
        section_batch_size,
    ),
    (
        "reduction",
        "Mean vs sum reduction",
        "Mean → sum reduction: how must lr change?",
        "reduction",
        section_reduction,
    ),
    (
        "per_sample",
        "Per-sample gradients",
        "Is each update the mean of the per-sample gradients?",
        "smoke",
        section_per_sample,
    ),
    (
        "huber",
        "Huber vs MSE",
        "What does Huber loss buy, on clean data and with outliers?",
        "loss",
        section_loss,
    ),
    ("init", "Zero initialisation", "Does zero initialisation still work?", "init", section_init),
    (
        "data_size",
        "Data size",
        "How does the error shrink with more data?",
        "data_size",
        section_data_size,
    ),
    ("newton", "Newton vs SGD", "Why first-order methods and not Newton?", "smoke", section_newton),
    (
        "partial_batch",
        "Partial batches",
        "What happens when n is not divisible by the batch size?",
        "partial_batch",
        section_partial_batch,
    ),
]


# --- output -----------------------------------------------------------------------------------


def save(fig: plt.Figure, out: Path, key: str) -> str:
    name = f"{key}.png"
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def hint(s: Section) -> str:
    return f"No runs for this question in this sweep: run `make sweep SWEEP={s.preset}`."


def to_markdown(parent: Run, sections: list[Section]) -> str:
    lines = [f"# FAQ report: sweep `{parent.info.run_name}` ({parent.info.run_id})", ""]
    for i, s in enumerate(sections, 1):
        lines += [f"## {i}. {s.title}", "", f"*{s.question}*", ""]
        if s.missing:
            lines += [hint(s), ""]
            continue
        if s.table is not None:
            flat = isinstance(s.table.index, pd.RangeIndex) or s.table.index.name is None
            lines += [s.table.to_markdown(floatfmt=".3g", index=not flat), ""]
        if s.figure:
            lines += [f"![{s.title}]({s.figure})", ""]
        lines += [f"**Answer.** {s.answer}", ""]
    return "\n".join(lines)


def to_html(parent: Run, sections: list[Section]) -> str:
    body = [f"<h1>FAQ report: sweep {html.escape(parent.info.run_name)}</h1>"]
    for i, s in enumerate(sections, 1):
        body += [
            f"<h2>{i}. {html.escape(s.title)}</h2>",
            f"<p><em>{html.escape(s.question)}</em></p>",
        ]
        if s.missing:
            body.append(f"<p>{html.escape(hint(s))}</p>")
            continue
        if s.table is not None:
            flat = isinstance(s.table.index, pd.RangeIndex) or s.table.index.name is None
            body.append(s.table.to_html(float_format=lambda x: f"{x:.3g}", index=not flat))
        if s.figure:
            body.append(f'<img src="{s.figure}" alt="{html.escape(s.title)}">')
        body.append(f"<p><strong>Answer.</strong> {html.escape(s.answer)}</p>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>FAQ report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def find_parent(client: mlflow.MlflowClient, sweep: str) -> Run:
    if sweep != "latest":
        return client.get_run(sweep)
    parent = latest_sweep(client)
    if parent is None:
        raise SystemExit("error: no sweep in the store yet: run `make sweep` first")
    return parent


def build_report(sweep: str = "latest", out: Path | None = None) -> tuple[str, list[Section]]:
    """Write the report for a sweep into ``out`` and log it to the sweep's parent run."""
    register_configs()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = find_parent(client, sweep)
    data = SweepData(client, parent)
    with tempfile.TemporaryDirectory() as tmp:
        folder = out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sections = []
        for key, title, question, preset, fn in SECTIONS:
            s = Section(key, title, question, preset)
            try:
                fn(data, s, folder)
            except MissingRuns:
                s.missing = True
            sections.append(s)
        markdown = to_markdown(parent, sections)
        (folder / "report.md").write_text(markdown)
        (folder / "report.html").write_text(to_html(parent, sections))
        client.log_artifacts(parent.info.run_id, str(folder), "report")
    return markdown, sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", default="latest", help="latest or a sweep's parent run id")
    parser.add_argument("--out", type=Path, default=None, help="also keep the files here")
    args = parser.parse_args(argv)
    markdown, _ = build_report(args.sweep, args.out)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
