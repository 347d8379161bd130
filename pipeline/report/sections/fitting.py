"""Under- and overfitting: how lr, batch size, updates and weight decay move the train/val gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline import stats, theory
from pipeline.report.data import Section, SweepData, need, save
from pipeline.report.sections.common import base, mean_sd, seeds_label

SPEC = (
    "fitting",
    "Under- and overfitting",
    "How should lr and batch size change when the model over- or underfits? Does the noise in "
    "minibatch SGD prevent overfitting?",
    "fitting",
)

# The footing of the question (conf/sweep/fitting.yaml): few noisy examples, every cell at the
# same number of updates; the grids vary d, weight decay, B and lr around the reference.
N, NOISE, LR, UPDATES = 50, 1.0, 0.1, 400
# The rules, in units of the label noise σ² (a fitted linear model leaves ≈ σ² on fresh data):
UNDERFIT_TRAIN = 2.0  # underfit: mean train MSE > 2σ² (it does not even fit the training set)
OVERFIT_VAL = 1.5  # overfit: mean val MSE > 1.5σ² and val > train by Welch's test on the seeds
RULES = (
    f"underfit: mean train MSE > {UNDERFIT_TRAIN:g}σ² (a converged linear fit leaves "
    f"σ²(n − d − 1)/n ≤ σ² on its training data); otherwise overfit: mean val MSE > "
    f"{OVERFIT_VAL:g}σ² and val MSE above train MSE by Welch's t-test on the seeds (p < 0.05); "
    f"otherwise good fit"
)
LOWER = {"a < b": "lower", "a > b": "higher", stats.NO_DIFFERENCE: stats.NO_DIFFERENCE}
# a run whose training MSE is below this many σ² interpolates its data: nothing is left to fit,
# so it counts as converged although its loss still falls by large relative steps
INTERPOLATED = 1e-9


def fitting_status(rows: pd.DataFrame, sigma2: float) -> pd.DataFrame:
    """The runs' outcome (`status`), with interpolating runs (train MSE < INTERPOLATED·σ²)
    counted converged."""
    done = (rows["status"] == "unconverged") & (rows["mse"] < INTERPOLATED * sigma2)
    return rows.assign(status=rows["status"].where(~done, "converged"))


def regime(g: pd.DataFrame, sigma2: float) -> str:
    """The rule of :data:`RULES` over a configuration's seeds."""
    if g["mse"].mean() > UNDERFIT_TRAIN * sigma2:
        return "underfit"
    if (
        g["val_mse"].mean() > OVERFIT_VAL * sigma2
        and stats.compare(g["val_mse"], g["mse"]).verdict == "a > b"
    ):
        return "overfit"
    return "good fit"


def early_stopping(d: SweepData, rows: pd.DataFrame) -> pd.DataFrame:
    """Per run, the model early stopping on val_mse keeps: the logged epoch with the lowest
    val_mse, its val_mse, and the updates made by then (training itself never stops)."""
    best, epoch = [], []
    for row in rows.itertuples():
        history = d.steps(row.run_id, "val_mse")
        e, v = min(history, key=lambda ev: ev[1])
        best.append(v)
        epoch.append(e)
    per_epoch = -(-rows["n"] // rows["B"])
    return rows.assign(best_val=best, best_epoch=epoch, best_updates=np.array(epoch) * per_epoch)


def numbers(g: pd.DataFrame, sigma2: float) -> dict[str, Any]:
    """answers.json entry of one configuration: means and sds over the seeds that did not
    diverge, which seeds, and the regime."""
    ok = g[~g["diverged"]]
    out: dict[str, Any] = {}
    for key, col in (
        ("train_mse", "mse"),
        ("val_mse", "val_mse"),
        ("gap", "gap"),
        ("early_stopped_val_mse", "best_val"),
    ):
        sm = stats.summarize(ok[col])
        out[f"{key}_mean"], out[f"{key}_sd"] = sm["mean"], sm["sd"]
    out["early_stopped_updates_median"] = float(ok["best_updates"].median())
    out["seeds"] = sorted(int(s) for s in ok["seed"])
    out["converged"] = int((ok["status"] == "converged").sum())
    out["diverged"] = int(g["diverged"].sum())
    out["regime"] = regime(ok, sigma2) if len(ok) else "diverged"
    return out


def cells(rows: pd.DataFrame, by: list[str], sigma2: float) -> pd.DataFrame:
    """One table row per configuration: train, val, gap, early-stopped val (mean ± sd)."""
    out = []
    for key, g in rows.groupby(by, sort=True):
        key_t = key if isinstance(key, tuple) else (key,)
        ok = g[~g["diverged"]]
        out.append(
            {
                **dict(zip(by, key_t, strict=True)),
                "train mse": mean_sd(ok["mse"]),
                "val mse": mean_sd(ok["val_mse"]),
                "gap": mean_sd(ok["gap"]),
                "early-stopped val": mean_sd(ok["best_val"]),
                "at update (median)": int(ok["best_updates"].median()) if len(ok) else 0,
                "converged": f"{int((ok['status'] == 'converged').sum())}/{len(g)}",
                "seeds": seeds_label(ok["seed"]),
                "regime": regime(ok, sigma2) if len(ok) else "diverged",
                "val_mean": ok["val_mse"].mean(),
            }
        )
    return pd.DataFrame(out)


def versus(
    rows: pd.DataFrame, key: str, reference: Any, table: pd.DataFrame
) -> dict[Any, stats.Comparison]:
    """Welch's test of every value of ``key`` against ``reference`` on val MSE; a column
    'val vs <key>=<reference>' added to ``table`` (same order as ``rows.groupby(key)``)."""
    ref = rows.loc[(rows[key] == reference) & ~rows["diverged"], "val_mse"]
    out = {}
    for value, g in rows.groupby(key, sort=True):
        if value != reference:
            out[value] = stats.compare(g.loc[~g["diverged"], "val_mse"], ref)
    table[f"val vs {key} {reference:g}"] = [
        "–"
        if v == reference
        else f"{LOWER[out[v].verdict]} (×{out[v].ratio:.2f}, p = {out[v].p_value:.2g})"
        for v in table[key]
    ]
    return out


def close_d(rows: pd.DataFrame) -> int:
    """The 'd close to n' the grids vary weight decay and B at (else the largest d with an
    OLS solution: d + 2 < n)."""
    varied = rows.loc[(rows["weight_decay"] > 0) | (rows["B"] < rows["n"]), "d"]
    if len(varied):
        return int(varied.mode().iloc[0])
    return int(rows.loc[rows["d"] + 2 < rows["n"], "d"].max())


def config_label(row: Any) -> dict[str, Any]:
    return {
        "d": int(row.d),
        "n": int(row.n),
        "noise": float(row.noise),
        "B": int(row.B),
        "lr": float(row.lr),
        "weight_decay": float(row.weight_decay),
        "updates": int(row.updates),
    }


def describe(label: dict[str, Any]) -> str:
    wd = f", weight decay {label['weight_decay']:g}" if label["weight_decay"] else ""
    return f"d = {label['d']}, B = {label['B']}, lr {label['lr']:g}{wd}, {label['updates']} updates"


def build(d: SweepData, s: Section, out: Path) -> None:
    keep = ("n", "epochs", "min_updates", "weight_decay", "zero_features")
    rows = d.select(
        **base(*keep), n=N, noise=NOISE, epochs=1, min_updates=UPDATES, lr_scaling="none"
    )
    if "val_mse" in rows:
        rows = rows[rows["val_mse"].notna()]
    rows = need(rows, varying="d")
    sigma2 = NOISE**2
    rows = s.use(early_stopping(d, fitting_status(rows, sigma2)))
    first = d.config(rows["run_id"].iloc[0])
    signal_sq = float(sum(w * w for w in first.data.true_w) + first.data.true_b**2)
    full = rows["B"] == rows["n"]
    dc = close_d(rows)
    s.answers = {"rules": RULES, "sigma2": sigma2, "n": N, "updates": UPDATES}
    text: list[str] = []

    # --- train and val against d (full-batch GD at the reference lr) ------------------------
    by_d = rows[full & (rows["lr"] == LR) & (rows["weight_decay"] == 0)]
    t = cells(by_d, ["d"], sigma2)
    ols = by_d.groupby("d")
    t.insert(1, "(d+1)/n", [(dd + 1) / N for dd in t["d"]])
    t["OLS train (same data)"] = [mean_sd(g["ols_mse"]) for _, g in ols]
    t["OLS val (same data)"] = [mean_sd(g["ols_val_mse"]) for _, g in ols]
    t["theory OLS train"] = [theory.ols_train_mse(int(dd), N, NOISE) for dd in t["d"]]
    t["theory OLS val"] = [theory.ols_val_mse(int(dd), N, NOISE, signal_sq) for dd in t["d"]]
    s.tables.append(
        (
            f"Full-batch gradient descent, lr {LR:g}, {UPDATES} updates, n = {N}, σ = {NOISE:g}; "
            f"d features of which 2 carry signal. Mean ± sd over the seeds that did not diverge, "
            f"unconverged ones included: stopping short of least squares is one of the regimes "
            f"this section compares (the 'converged' column counts them). Early-stopped val: the "
            f"lowest val_mse over the logged epochs (every epoch), chosen on the same held-out "
            f"set (optimistic: it can only be at or below the final value). Converged: the "
            f"report's rule on the training loss (or train MSE < {INTERPOLATED:g}σ²: "
            f"interpolated). OLS: least squares on the same data (minimum-norm once "
            f"d + 1 ≥ n), the point GD converges to; theory: σ²(n − d − 1)/n and "
            f"σ²(1 + 1/n)(n − 2)/(n − d − 2) below the threshold, σ² + ‖θ‖²(1 − n/p) + "
            f"σ²n/(p − n − 1) past it (p = d + 1; approximate). Regime: {RULES}.",
            t.drop(columns=["val_mean"]),
        )
    )
    s.answers["by_d"] = {
        str(int(dd)): numbers(g, sigma2)
        | {
            "ols_train_mse_mean": float(g["ols_mse"].mean()),
            "ols_val_mse_mean": float(g["ols_val_mse"].mean()),
            "theory_ols_train_mse": theory.ols_train_mse(int(dd), N, NOISE),
            "theory_ols_val_mse": theory.ols_val_mse(int(dd), N, NOISE, signal_sq),
        }
        for dd, g in by_d.groupby("d")
    }
    regimes = dict(zip(t["d"], t["regime"], strict=True))
    means = by_d.groupby("d")[["mse", "val_mse"]].mean()
    train_falls = bool(means["mse"].is_monotonic_decreasing)
    val_rises = bool(means["val_mse"].is_monotonic_increasing)
    text.append(
        f"With n = {N} noisy examples (σ² = {sigma2:g}) and {UPDATES} full-batch updates at lr "
        f"{LR:g}, as features are added the training MSE "
        + ("falls" if train_falls else "changes")
        + " ("
        + ", ".join(f"d = {int(r.d)}: {r['train mse']}" for _, r in t.iterrows())
        + ") while the held-out MSE "
        + ("rises" if val_rises else "changes")
        + " ("
        + ", ".join(f"{r['val mse']}" for _, r in t.iterrows())
        + "). By the rule: "
        + ", ".join(f"d = {int(k)} {v}" for k, v in regimes.items())
        + "."
    )
    below = t[t["d"] + 3 < N]
    if len(below):
        ratio = [
            float(g["ols_val_mse"].mean()) / theory.ols_val_mse(int(dd), N, NOISE)
            for dd, g in ols
            if dd + 3 < N
        ]
        ols_means = by_d.groupby("d")["ols_val_mse"].mean()
        nearest = int(min(ols_means.index, key=lambda x: abs(x + 1 - N)))
        peak = int(ols_means.idxmax())
        text.append(
            f"Least squares on the same data follows its theory (val/theory "
            f"{min(ratio):.2f}–{max(ratio):.2f} for d < n − 2) and its held-out MSE peaks at "
            f"d = {peak} ({ols_means[peak]:.3g})"
            + (", where d + 1 reaches n: the interpolation threshold." if peak == nearest else ".")
        )
    short = [
        (int(dd), g)
        for dd, g in by_d.groupby("d")
        if (g["status"] != "converged").sum() > len(g) / 2
        and g["val_mse"].mean() < g["ols_val_mse"].mean()  # stopping short helped
    ]
    if short:
        text.append(
            f"Where most seeds of gradient descent have not converged in {UPDATES} updates it "
            f"has not reached least squares, and stopping short acted as a regulariser "
            f"(val MSE, GD vs OLS on the same data: "
            + "; ".join(
                f"d = {dd}: {mean_sd(g['val_mse'])} vs {mean_sd(g['ols_val_mse'])}"
                for dd, g in short
            )
            + ")."
        )

    # --- the configurations the answer names ------------------------------------------------
    groups = {
        (int(k[0]), int(k[1]), float(k[2]), float(k[3])): g
        for k, g in rows.groupby(["d", "B", "lr", "weight_decay"])
    }
    classified = {k: regime(g[~g["diverged"]], sigma2) for k, g in groups.items()}
    reference = (dc, N, LR, 0.0)
    over = [k for k, v in classified.items() if v == "overfit"]
    under = [k for k, v in classified.items() if v == "underfit"]
    if over:
        pick = reference if reference in over else max(over, key=lambda k: groups[k]["gap"].mean())
        g = groups[pick]
        s.answers["overfit"] = {"config": config_label(g.iloc[0])} | numbers(g, sigma2)
        text.append(
            f"Overfitting, {describe(config_label(g.iloc[0]))}: train MSE {mean_sd(g['mse'])}, "
            f"val MSE {mean_sd(g['val_mse'])} (seeds: {seeds_label(g['seed'])})."
        )
    if under:
        pick = max(under, key=lambda k: groups[k]["mse"].mean())
        g = groups[pick]
        s.answers["underfit"] = {"config": config_label(g.iloc[0])} | numbers(g, sigma2)
        both = g["val_mse"].mean() > UNDERFIT_TRAIN * sigma2
        text.append(
            f"Underfitting, {describe(config_label(g.iloc[0]))}: train MSE {mean_sd(g['mse'])}, "
            f"val MSE {mean_sd(g['val_mse'])}: "
            + ("both" if both else "the training MSE")
            + " far above σ², the model has not yet fitted even the training data."
        )
        same_d = rows[(rows["d"] == pick[0]) & full & (rows["weight_decay"] == 0)]
        if same_d["lr"].nunique() > 1:
            t_lr0 = cells(same_d, ["lr"], sigma2)
            fixes = t_lr0[t_lr0["regime"] != "underfit"]
            if len(fixes):
                text.append(
                    "At the same d and number of updates a larger lr fixes it: "
                    + "; ".join(
                        f"lr {r.lr:g}: train {r['train mse']}, val {r['val mse']} ({r.regime})"
                        for _, r in fixes.iterrows()
                    )
                    + " (gradient descent at a small lr moves by lr × updates along one path: "
                    "more updates would do the same)."
                )

    # --- remedies at d close to n: weight decay, batch size, lr, early stopping -------------
    at = rows[rows["d"] == dc]
    at_full = at["B"] == at["n"]
    verdicts: dict[str, str] = {}
    wd_rows = at[at_full & (at["lr"] == LR)]
    if wd_rows["weight_decay"].nunique() > 1:
        tw = cells(wd_rows, ["weight_decay"], sigma2)
        cmp = versus(wd_rows, "weight_decay", 0.0, tw)
        best = float(tw.loc[tw["val_mean"].idxmin(), "weight_decay"])
        verdict = "lower" if best > 0 and cmp[best].verdict == "a < b" else None
        s.tables.append(
            (
                f"Weight decay (L2 on w, d2l 4.5) at d = {dc}, full batch, lr {LR:g}, "
                f"{UPDATES} updates.",
                tw.drop(columns=["val_mean"]),
            )
        )
        s.answers["weight_decay"] = {
            "d": dc,
            "cells": {f"{w:g}": numbers(g, sigma2) for w, g in wd_rows.groupby("weight_decay")},
            "best": best,
            "verdicts": {f"{w:g}": c.verdict for w, c in cmp.items()},
            "reduces_val_mse": verdict == "lower",
        }
        val_at = dict(zip(tw["weight_decay"], tw["val mse"], strict=True))
        train_at = dict(zip(tw["weight_decay"], tw["train mse"], strict=True))
        verdicts["weight decay"] = (
            f"weight decay {best:g} lowers val MSE from {val_at.get(0.0, '–')} to "
            f"{val_at[best]} (p = {cmp[best].p_value:.2g})"
            if verdict
            else "no weight decay of the grid lowers val MSE measurably"
        )
        most = float(tw["weight_decay"].max())
        if most > best:
            ok = ~wd_rows["diverged"]
            c = stats.compare(
                wd_rows.loc[ok & (wd_rows["weight_decay"] == most), "val_mse"],
                wd_rows.loc[ok & (wd_rows["weight_decay"] == best), "val_mse"],
            )
            if c.verdict == "a > b":
                verdicts["weight decay"] += (
                    f", while {most:g} raises it again to {val_at[most]} (train MSE "
                    f"{train_at[most]}: it shrinks the true weights too)"
                )
    b_rows = at[(at["lr"] == LR) & (at["weight_decay"] == 0)]
    if b_rows["B"].nunique() > 1:
        tb = cells(b_rows, ["B"], sigma2)
        cmp_b = versus(b_rows, "B", N, tb)
        s.tables.append(
            (
                f"Batch size at d = {dc}, lr {LR:g}, {UPDATES} updates each (equal updates: the "
                f"same expected path, B only sets the gradient noise).",
                tb.drop(columns=["val_mean"]),
            )
        )
        lower = [int(b) for b, c in cmp_b.items() if c.verdict == "a < b"]
        s.answers["minibatch"] = {
            "d": dc,
            "cells": {str(int(b)): numbers(g, sigma2) for b, g in b_rows.groupby("B")},
            "verdicts": {str(int(b)): c.verdict for b, c in cmp_b.items()},
            "noise_reduces_overfitting": bool(lower),
        }
        verdicts["minibatch noise"] = (
            f"minibatches B = {', '.join(map(str, lower))} lower val MSE against full batch"
            if lower
            else "minibatch noise does not lower val MSE: "
            + "; ".join(f"B = {int(b)}: {c.verdict} (×{c.ratio:.2f})" for b, c in cmp_b.items())
            + " against full batch"
        )
    lr_rows = rows[full & (rows["weight_decay"] == 0)]
    lr_rows = lr_rows[lr_rows.groupby("d")["lr"].transform("nunique") > 1]
    if len(lr_rows):
        tl = cells(lr_rows, ["d", "lr"], sigma2)
        tl.insert(2, "lr × updates", tl["lr"] * UPDATES)
        s.tables.append(
            (
                f"Learning rate at equal updates ({UPDATES}), full batch: lr × updates is how far "
                f"gradient descent gets along its path.",
                tl.drop(columns=["val_mean"]),
            )
        )
        lr_verdicts = {}
        for dd, g in lr_rows.groupby("d"):
            ref = g.loc[g["lr"] == LR, "val_mse"]
            for lr, h in g.groupby("lr"):
                if lr != LR and len(ref):
                    lr_verdicts[f"d{int(dd)}/lr{lr:g}"] = stats.compare(h["val_mse"], ref).verdict
        s.answers["lr"] = {
            "cells": {
                f"d{int(k[0])}/lr{k[1]:g}": numbers(g, sigma2)
                for k, g in lr_rows.groupby(["d", "lr"])
            },
            "verdicts_vs_lr": lr_verdicts,
            "reference_lr": LR,
        }
        at_dc = {k: v for k, v in lr_verdicts.items() if k.startswith(f"d{dc}/")}
        if at_dc:
            verdicts["lr"] = "a smaller lr at the same updates: " + "; ".join(
                f"{k.split('/')[1].replace('lr', 'lr ')}: {LOWER[v]}" for k, v in at_dc.items()
            )
    ref_rows = at[at_full & (at["lr"] == LR) & (at["weight_decay"] == 0) & ~at["diverged"]]
    if len(ref_rows):
        c = stats.compare(ref_rows["best_val"], ref_rows["val_mse"])
        s.answers["early_stopping"] = {
            "d": dc,
            "final_val_mse_mean": float(ref_rows["val_mse"].mean()),
            "early_stopped_val_mse_mean": float(ref_rows["best_val"].mean()),
            "early_stopped_updates": sorted(int(u) for u in ref_rows["best_updates"]),
            "verdict": c.verdict,
            "reduces_val_mse": c.verdict == "a < b",
        }
        verdicts["early stopping"] = (
            f"early stopping at the lowest val_mse (median update "
            f"{int(ref_rows['best_updates'].median())} of {UPDATES}) gives val "
            f"{mean_sd(ref_rows['best_val'])} against {mean_sd(ref_rows['val_mse'])} at the end: "
            f"{LOWER[c.verdict]} (p = {c.p_value:.2g})"
        )
    if verdicts:
        text.append(f"At d = {dc}: " + "; ".join(verdicts.values()) + ".")
    s.answers["verdicts"] = verdicts

    # --- the FAQ, from the verdicts -------------------------------------------------------
    helped, no_help = [], []
    if s.answers.get("weight_decay", {}).get("reduces_val_mse"):
        helped.append(f"weight decay ({s.answers['weight_decay']['best']:g})")
    elif "weight_decay" in s.answers:
        no_help.append("weight decay")
    if s.answers.get("early_stopping", {}).get("reduces_val_mse"):
        helped.append("early stopping on val_mse")
    elif "early_stopping" in s.answers:
        no_help.append("early stopping on val_mse (Welch on the seeds)")
    fewest = int(by_d["d"].min())
    if fewest < dc:
        c = stats.compare(
            by_d.loc[by_d["d"] == fewest, "val_mse"], by_d.loc[by_d["d"] == dc, "val_mse"]
        )
        (helped if c.verdict == "a < b" else no_help).append(f"fewer features (d = {fewest})")
    lr_moved = [
        v
        for k, v in s.answers.get("lr", {}).get("verdicts_vs_lr", {}).items()
        if k.startswith(f"d{dc}/") and v != stats.NO_DIFFERENCE
    ]
    if "lr" in s.answers and not lr_moved:
        no_help.append("a smaller lr at the same updates")
    noise_helps = s.answers.get("minibatch", {}).get("noise_reduces_overfitting")
    ols_at_dc = float(rows.loc[rows["d"] == dc, "ols_mse"].mean())
    if noise_helps is False:
        no_help.append("a smaller batch")
    if noise_helps is not None:
        text.append(
            "So minibatch noise does NOT prevent overfitting here: at equal updates and lr "
            "minibatch SGD follows gradient descent's path on average and ends near the same "
            "least-squares point, its noise only adds variance around it, in proportion to the "
            f"training residuals there (OLS train MSE {ols_at_dc:.2g} at d = {dc}, not σ²)."
            if not noise_helps
            else "Here minibatch noise measurably lowered the held-out error at equal updates "
            "(see the batch-size table)."
        )
    if helped or no_help:
        text.append(
            f"Against overfitting at d = {dc}, "
            + (", ".join(helped) + " lowered the held-out MSE measurably" if helped else "")
            + ("; " if helped and no_help else "")
            + (", ".join(no_help) + " did not measurably" if no_help else "")
            + "."
        )
    if noise_helps is False and "lr" in s.answers and not lr_moved:
        text.append(
            "That matches the lecture's answer that lr and batch size barely change the "
            "result: they change how fast training gets there (an underfitting run needs "
            "more lr × updates), not where least squares ends."
        )
    s.answer = " ".join(text)
    s.figure = figure(d, rows, by_d, dc, signal_sq, out, s.key)


def mean_curve(d: SweepData, g: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(updates, mean over seeds) of an epoch metric; diverged runs left out."""
    ok = g[~g["diverged"]]
    histories = [d.steps(r, key) for r in ok["run_id"]]
    if not histories:
        return np.array([]), np.array([])
    length = min(len(h) for h in histories)
    per_epoch = -(-int(ok["n"].iloc[0]) // int(ok["B"].iloc[0]))
    epochs = np.array([e for e, _ in histories[0][:length]])
    values = np.array([[v for _, v in h[:length]] for h in histories])
    return epochs * per_epoch, values.mean(0)


def figure(
    d: SweepData,
    rows: pd.DataFrame,
    by_d: pd.DataFrame,
    dc: int,
    signal_sq: float,
    out: Path,
    key: str,
) -> str:
    """Left: train, val and least squares' val against d, with theory. Right: the d close to
    n's curves over the updates (full batch, the best weight decay, the smallest batch)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
    g = by_d.groupby("d")
    ds = np.array(sorted(by_d["d"].unique()))
    for col, fmt, label in (
        ("mse", "o-", "GD train"),
        ("val_mse", "s-", "GD val"),
        ("ols_val_mse", "^--", "OLS / min-norm val (same data)"),
    ):
        mean, sd = g[col].mean(), g[col].std()
        left.errorbar(ds, mean, yerr=sd.fillna(0), fmt=fmt, capsize=3, label=label)
    # the two sides of the interpolation threshold (infinite in between), each its own line
    below, above = list(range(1, N - 2)), list(range(N + 1, int(ds.max()) + 1))
    for i, side in enumerate((below, above)):
        left.plot(
            side,
            [theory.ols_val_mse(x, N, NOISE, signal_sq) for x in side],
            "k:",
            label="theory OLS / min-norm val" if i == 0 else None,
        )
    left.axvline(N - 1, color="grey", lw=0.8)
    left.set_yscale("log")
    left.set_ylim(1e-2, 1e4)  # train MSE of interpolating fits (≈ 0) and the peak: off scale
    left.set(xlabel=f"features d (n = {N}; line: d + 1 = n)", ylabel="MSE (mean ± sd)")
    left.set_title(f"train vs held-out MSE, {UPDATES} full-batch updates", fontsize=10)
    left.legend(fontsize=7)
    at = rows[rows["d"] == dc]
    ref = at[(at["B"] == at["n"]) & (at["lr"] == LR) & (at["weight_decay"] == 0)]
    curves = [(ref, "mse", "k--", "train, full batch"), (ref, "val_mse", "k-", "val, full batch")]
    wd = at[(at["B"] == at["n"]) & (at["lr"] == LR) & (at["weight_decay"] > 0)]
    if len(wd):
        best = wd.groupby("weight_decay")["val_mse"].mean().idxmin()
        curves.append(
            (wd[wd["weight_decay"] == best], "val_mse", "b-", f"val, weight decay {best:g}")
        )
    mb = at[(at["B"] < at["n"]) & (at["lr"] == LR) & (at["weight_decay"] == 0)]
    if len(mb):
        b = int(mb["B"].min())
        curves.append((mb[mb["B"] == b], "val_mse", "r-", f"val, B = {b}"))
    for g_, metric, fmt, label in curves:
        if len(g_):
            x, y = mean_curve(d, g_, metric)
            right.plot(x, y, fmt, label=label, lw=1)
    right.set_yscale("log")
    right.set(xlabel="update", ylabel="MSE (mean over seeds)")
    right.set_title(f"d = {dc}: curves (early stopping reads val)", fontsize=10)
    right.legend(fontsize=7)
    return save(fig, out, key)
