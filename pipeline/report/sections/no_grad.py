"""torch.no_grad and detach: why d2l's sgd runs under torch.no_grad(), what detach() does."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import stats
from pipeline.report.data import Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import base, mean_sd, outcome_counts, seeds_label

SPEC = (
    "no_grad",
    "torch.no_grad and detach",
    "Why is d2l's `sgd` wrapped in `torch.no_grad()`, and what does `detach()` do?",
    "no_grad",
)

VARIANTS = ("no_grad", "without_no_grad", "rebind", "rebind_detach", "no_zero_grad")
# rules over the runs (stated in the answer)
GROWS = 10.0  # graph nodes at the last update / at the first: the graph keeps growing
SAME = 1e-12  # max |Δθ| against d2l's no_grad for the same seed: the same trajectory
# Welch's t-test on log w_error against d2l's no_grad runs (pipeline.stats.compare)
VERDICT = {"a < b": "smaller", "a > b": "larger", stats.NO_DIFFERENCE: stats.NO_DIFFERENCE}

CODE = """\
def sgd(params, lr, batch_size):          # d2l 3.2 (model.sgd=no_grad)
    with torch.no_grad():                 # the update is not part of the model
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()            # else the next backward() adds to it

# model.sgd=without_no_grad: the same lines outside no_grad -> autograd refuses
# model.sgd=rebind:          w = w - lr * w.grad  (out of place, no no_grad): w joins the graph
# model.sgd=rebind_detach:   w = (w - lr * w.grad).detach().requires_grad_()
# model.sgd=no_zero_grad:    d2l's update without param.grad.zero_()"""


def first_last(values: np.ndarray) -> tuple[float, float]:
    """Mean of the first and of the last 10% of a step metric's values."""
    if len(values) == 0:
        return math.nan, math.nan
    k = max(1, len(values) // 10)
    return float(values[:k].mean()), float(values[-k:].mean())


def build(d: SweepData, s: Section, out: Path) -> None:
    rows = d.select(
        **base("epochs", "sgd"),
        sgd=list(VARIANTS),
        model="scratch",
        engine="scratch",
        epochs=1,
        lr=0.03,
        lr_scaling="none",
        B=10,
    )
    rows = s.use(need(rows, varying="sgd"))
    baseline = rows[rows["sgd"] == "no_grad"].set_index("seed")
    out_rows, answers, curves = [], {}, {}
    for variant in VARIANTS:
        g = rows[rows["sgd"] == variant]
        if g.empty:
            continue
        errors = g["update_error"].dropna().unique().tolist()
        raises = bool(len(errors)) and bool((g["updates"] == 0).all())
        # (step, value) of every run, read once: the table and the plot use them
        node_curves = [np.array(d.steps(r, "graph_nodes"), dtype=float) for r in g["run_id"]]
        nodes = [first_last(c[:, 1] if len(c) else c) for c in node_curves]
        times = [first_last(np.array(d.history(r, "backward_ms"))) for r in g["run_id"]]
        node_first = float(np.nanmean([n[0] for n in nodes])) if not raises else math.nan
        node_last = float(np.nanmean([n[1] for n in nodes])) if not raises else math.nan
        time_ratio = (
            float(np.nanmedian([t[1] / t[0] for t in times if t[0] > 0]))
            if not raises
            else math.nan
        )
        # the same seed's parameters against d2l's no_grad: is it the same trajectory?
        theta = [c for c in rows if c.startswith("metrics.w_hat_")] + ["metrics.b_hat"]
        deltas = []
        for _, row in g.iterrows():
            if row["seed"] in baseline.index and not raises:
                other = baseline.loc[row["seed"]]
                deltas.append(max(abs(float(row[c]) - float(other[c])) for c in theta))
        max_delta = max(deltas) if deltas else math.nan
        base_err = np.log(baseline["w_error"].astype(float))
        cmp = stats.compare(np.log(g["w_error"].astype(float)), base_err) if not raises else None
        entry: dict[str, Any] = {
            "raises": raises,
            "error": errors[0] if errors else None,
            "updates": int(g["updates"].max()),
            "graph_nodes_first": node_first,
            "graph_nodes_last": node_last,
            "graph_grows": bool(node_last / node_first > GROWS) if not raises else False,
            "backward_time_ratio_last_first": time_ratio,
            "w_error": stats.summarize(g["w_error"].astype(float)),
            "same_trajectory_as_no_grad": bool(max_delta < SAME) if deltas else False,
            "max_abs_theta_difference": max_delta,
            "w_error_vs_no_grad": VERDICT[cmp.verdict] if cmp is not None else "no update made",
            "p_value_vs_no_grad": cmp.p_value if cmp is not None else math.nan,
            "seeds": len(g),
        }
        answers[variant] = entry
        out_rows.append(
            {
                "model.sgd": variant,
                "trains": f"raises: {errors[0]}" if raises else "yes",
                "runs by outcome": outcome_counts(g),
                "updates": entry["updates"],
                "graph nodes (first → last 10%)": "–"
                if raises
                else f"{node_first:.0f} → {node_last:.0f}",
                "backward time last/first": "–" if raises else f"{time_ratio:.1f}×",
                "final w_error (mean ± sd)": mean_sd(g["w_error"].astype(float)),
                "same run as no_grad": "–"
                if raises or variant == "no_grad"
                else ("yes" if entry["same_trajectory_as_no_grad"] else "no"),
                "seeds": seeds_label(g["seed"]),
            }
        )
        if not raises:
            curves[variant] = node_curves[0]
    s.table = pd.DataFrame(out_rows)
    s.answers = answers
    s.code = CODE

    fig, ax = new_figure()
    for variant, c in curves.items():
        if len(c):
            ax.plot(c[:, 0], c[:, 1], label=variant)
    ax.set(xlabel="update", ylabel="autograd nodes reachable from the batch loss")
    ax.set_title("what backward() walks, per update (one seed)")
    ax.legend()
    s.figure = save(fig, out, s.key)

    a = answers
    parts = []
    if "without_no_grad" in a:
        w = a["without_no_grad"]
        parts.append(
            "Outside `torch.no_grad()` the in-place update `param -= lr * param.grad` "
            + (
                f"fails at the first update ({w['seeds']} of {w['seeds']} seeds): “{w['error']}”."
                if w["raises"]
                else "did not fail here."
            )
        )
    if "rebind" in a:
        r = a["rebind"]
        parts.append(
            "Written out of place (`w = w - lr * w.grad`) it runs, but autograd records the "
            f"update: the graph behind each batch loss grows from {r['graph_nodes_first']:.0f} "
            f"to {r['graph_nodes_last']:.0f} nodes over {r['updates']} updates "
            f"({'grows' if r['graph_grows'] else 'does not grow'} by the rule last/first > "
            f"{GROWS:g}) and backward() gets {r['backward_time_ratio_last_first']:.1f}× slower: "
            "every earlier update stays referenced, so the graph and the memory it holds grow "
            "with training, though the values are "
            + ("the same" if r["same_trajectory_as_no_grad"] else "not the same")
            + f" as d2l's (max |Δθ| {r['max_abs_theta_difference']:.1e})."
        )
    if "rebind_detach" in a:
        r = a["rebind_detach"]
        parts.append(
            "`detach()` cuts that history: with it the graph stays at "
            f"{r['graph_nodes_last']:.0f} nodes and the run is "
            + ("identical to" if r["same_trajectory_as_no_grad"] else "different from")
            + " d2l's."
        )
    if "no_zero_grad" in a:
        z, n = a["no_zero_grad"], a.get("no_grad")
        ratio = z["w_error"]["mean"] / n["w_error"]["mean"] if n else math.nan
        parts.append(
            "Forgetting `param.grad.zero_()` makes every gradient the sum of all earlier ones: "
            f"final w_error {z['w_error']['mean']:.3g} against {n['w_error']['mean']:.3g} "
            f"(×{ratio:.0f}; {z['w_error_vs_no_grad']} by Welch's t-test on log w_error, "
            f"p = {z['p_value_vs_no_grad']:.1g}). Its runs are "
            + outcome_counts(rows[rows["sgd"] == "no_zero_grad"])
            + " (a loss that ends above where it started is diverged): their mean w_error is "
            "shown anyway, because how far the mistake lands is the point."
            if n
            else ""
        )
    s.answer = (
        " ".join(p for p in parts if p)
        + f" Footing: the scratch model, lr 0.03, B = 10, one epoch, {len(rows)} runs over "
        "the same seeds; graph size and backward time are logged per update "
        "(`graph_nodes`, `backward_ms`). One epoch settles no run (d2l's own: "
        + outcome_counts(rows[rows["sgd"] == "no_grad"])
        + "): the variants are compared update for update on the same seeds, not at "
        "convergence."
    )
