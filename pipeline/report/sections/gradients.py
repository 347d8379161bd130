"""Gradients: How do I access the gradients of the model, and what do they show?"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import stats, theory
from pipeline.report.data import MissingRuns, Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import base, mean_sd, seeds_label

SPEC = (
    "gradients",
    "Gradients",
    "How do I access the gradients of the model (3.3 exercise 3), and what do they show?",
    "batch_size",
)

LR, UPDATES, BATCHES = 0.03, 3000, (1, 10, 100)
# measured / theory of the stationary gradient RMS that counts as "matches theory"
MATCH = (0.8, 1.25)

CODE = """\
# d2l 3.2 (model=scratch): the leaves w, b hold their gradient after l.backward()
w.grad, b.grad
# d2l 3.3 (model=linear): the layer's parameters do
net[0].weight.grad, net[0].bias.grad
# both read in pipeline/steps.py (ScratchStep.update, LinearStep.update) before the update
# zeroes them; the loop logs their norms every few updates: grad_norm_w, grad_norm_b, grad_norm"""


Curve = list[tuple[int, float]]  # (update, value) of a logged metric


def tail_rms(curve: Curve, after: int) -> float:
    """√(mean g²) over the logged updates after ``after`` (the stationary part of the run)."""
    values = [v for step, v in curve if step > after]
    return stats.rms(values) if values else math.nan


def stationary_from(B: int, dim: int, noise: float, n: int, e0: float) -> int:
    """Updates after which a run sits at its floor (theory §2), and at least half the run."""
    return max(theory.updates_to_floor(LR, B, n, dim, noise, e0), UPDATES // 2)


def noise_table(
    d: SweepData, s: Section
) -> tuple[pd.DataFrame, dict[str, dict], dict[int, list[Curve]]]:
    rows = d.select(
        **base("epochs", "min_updates"),
        epochs=1,
        min_updates=UPDATES,
        lr=LR,
        lr_scaling="none",
        B=list(BATCHES),
    )
    rows = s.use(need(rows[~rows["diverged"]], varying="B"))
    out, answers = [], {}
    curves_w: dict[int, list[Curve]] = {}
    for B, g in rows.groupby("B"):
        first = g.iloc[0]
        dim, noise, n = int(first["d"]), float(first["noise"]), int(first["n"])
        e0 = float(np.hypot(2.0, 3.4))  # ‖w‖ from the normal(0, 0.01) init: the d2l w
        after = stationary_from(int(B), dim, noise, n, e0)
        theory_w, theory_b = (
            math.sqrt(x) for x in theory.gradient_noise_sq(LR, int(B), dim, noise, n)
        )
        row: dict = {"B": int(B), "stationary after": after}
        entry: dict = {"stationary_after": after, "seeds": len(g)}
        for part, th in (("w", theory_w), ("b", theory_b)):
            runs = [d.steps(r, f"grad_norm_{part}") for r in g["run_id"]]
            if part == "w":
                curves_w[int(B)] = runs  # the figure's curves
            measured = [tail_rms(curve, after) for curve in runs]
            sm = stats.summarize(measured)
            ratio = sm["mean"] / th
            row[f"‖∇{part}‖ RMS (mean ± sd)"] = mean_sd(measured)
            row[f"theory {part}"] = f"{th:.3g}"
            row[f"ratio {part}"] = f"{ratio:.2f}"
            entry[f"rms_{part}"] = {"mean": sm["mean"], "sd": sm["sd"]}
            entry[f"theory_{part}"] = th
            entry[f"ratio_{part}"] = ratio
            entry[f"matches_{part}"] = MATCH[0] <= ratio <= MATCH[1]
        row["seeds"] = seeds_label(g["seed"])
        out.append(row)
        answers[str(int(B))] = entry
    return pd.DataFrame(out), answers, curves_w


def models_agree(d: SweepData, s: Section) -> tuple[pd.DataFrame, float, int]:
    """The same batches through the two d2l codes: max relative difference of the logged
    per-parameter gradient norms, per seed."""
    rows = d.select(**base(), lr=LR, lr_scaling="none", B=10, engine=["scratch", "linear"])
    rows = s.use(need(rows, varying="engine"))
    out, worst = [], 0.0
    for seed, g in rows.groupby("seed"):
        by = {e: r for e, r in zip(g["engine"], g["run_id"], strict=True)}
        if len(by) < 2:
            continue
        diff = 0.0
        for key in ("grad_norm_w", "grad_norm_b"):
            a = np.array(d.history(by["scratch"], key))
            b = np.array(d.history(by["linear"], key))
            if len(a) != len(b) or len(a) == 0:
                diff = math.inf
                break
            diff = max(diff, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))))
        worst = max(worst, diff)
        out.append({"seed": int(seed), "max relative difference": f"{diff:.1e}"})
    return pd.DataFrame(out), worst, len(out)


def build(d: SweepData, s: Section, out: Path) -> None:
    table, per_B, curves_w = noise_table(d, s)
    s.tables.append(
        (
            f"Stationary gradient RMS, constant lr {LR}, MSE mean, {UPDATES} updates (equal "
            "updates), against theory: c·√(fσ²(d or 1)/B + the iterate's own O(η) part). "
            "Every run that did not diverge counts, unconverged ones too: the gradient noise "
            "is measured on the updates after the transient, whatever the loss's last epochs "
            "did.",
            table,
        )
    )
    try:
        agree, worst, seeds = models_agree(d, s)
        s.tables.append(("scratch (w.grad, b.grad) vs linear (net[0].weight.grad, ...)", agree))
    except MissingRuns:  # no d2l pair: the answer says only what the noise table shows
        agree, worst, seeds = pd.DataFrame(), math.nan, 0
    ratios = [e[f"ratio_{p}"] for e in per_B.values() for p in ("w", "b")]
    all_match = all(e[f"matches_{p}"] for e in per_B.values() for p in ("w", "b"))
    bs = sorted(int(b) for b in per_B)
    if len(bs) >= 2:
        rms = [per_B[str(b)]["rms_w"]["mean"] for b in bs]
        slope = theory.loglog_slope(bs, rms)
    else:
        slope = math.nan
    s.answers = {
        "per_batch_size": per_B,
        "rms_w_slope_vs_B": slope,
        "matches_theory": all_match,
        "match_rule": f"measured/theory RMS in [{MATCH[0]}, {MATCH[1]}] for w and b",
        "scratch_vs_linear_max_rel_diff": worst,
        "scratch_vs_linear_seeds": seeds,
    }
    s.code = CODE

    fig, ax = new_figure()
    for B, curves in sorted(curves_w.items()):
        length = min(len(c) for c in curves)
        steps = np.array([st for st, _ in curves[0][:length]])
        values = np.array([[v for _, v in c[:length]] for c in curves])
        line = ax.plot(steps, values.mean(0), label=f"B = {B} ({len(curves)} seeds)")[0]
        ax.axhline(per_B[str(int(B))]["theory_w"], ls="--", color=line.get_color())
    ax.set_yscale("log")
    ax.set(xlabel="update", ylabel="‖∇w‖ of the batch loss (seed mean)")
    ax.set_title("gradient norms fall to the label-noise floor (dashed: theory)")
    ax.legend()
    s.figure = save(fig, out, s.key)

    verdict = "every cell meets" if all_match else "not every cell meets"
    agree_text = (
        f" On the same batches the two codes' gradients are the same numbers: max relative "
        f"difference {worst:.1e} over {seeds} seeds (a test asserts it batch by batch)."
        if seeds
        else ""
    )
    s.answer = (
        "After `l.backward()` the gradient is in `w.grad`/`b.grad` (scratch) or "
        "`net[0].weight.grad`/`net[0].bias.grad` (linear); each update the loop logs their "
        "norms (`grad_norm_w`, `grad_norm_b`, and `grad_norm` of both). They fall while the "
        "model learns and then stop falling: at the optimum the batch gradient is the label "
        "noise averaged over B examples, not zero, which is why constant-lr SGD keeps moving "
        f"(its noise floor). Measured stationary RMS / theory: {min(ratios):.2f}–"
        f"{max(ratios):.2f} ({verdict} the rule: {s.answers['match_rule']}); the RMS falls "
        f"with B with slope {slope:.2f} in log-log (theory −½)." + agree_text
    )
