"""Partial batches: What happens when n is not divisible by the batch size?"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import stats
from pipeline.report.data import Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import spread

SPEC = (
    "partial_batch",
    "Partial batches",
    "What happens when n is not divisible by the batch size?",
    "partial_batch",
)


def build(d: SweepData, s: Section, out: Path) -> None:
    rows = d.select(
        source="memory", loss="mse", n=1000, B=[300, 400], lr=0.1, outliers=0.0, schedule="constant"
    )
    rows = rows[rows["min_updates"] > 0]
    rows = s.use(need(rows, varying="B"))
    variant = np.where(
        rows["reduction"] == "nominal",
        "d2l: sum / nominal B",
        np.where(rows["drop_last"], "drop the last batch", "keep it, mean over its length"),
    )
    rows = rows.assign(variant=variant)
    t = spread(rows, ["B", "variant"], "w_error")
    t["updates"] = [
        int(rows.loc[(rows["B"] == b) & (rows["variant"] == v), "updates"].iloc[0])
        for b, v in zip(t["B"], t["variant"], strict=True)
    ]
    s.tables.append(
        (
            "n = 1000, lr 0.1, all at the same number of updates (240); w_error over seeds.",
            t[["B", "variant", "updates", "w_error (mean ± sd)", "seeds", "left out"]],
        )
    )
    verdicts: list[str] = []
    differs: list[bool] = []
    s.answers = {}
    for b, g in rows.groupby("B"):
        keep = g[g["variant"] == "keep it, mean over its length"]["w_error"]
        for other in ("drop the last batch", "d2l: sum / nominal B"):
            o = g[g["variant"] == other]["w_error"]
            if len(o) and len(keep):
                c = stats.compare(np.log(o), np.log(keep))
                ratio = o.mean() / keep.mean()
                verdicts.append(
                    f"B={int(b)}, {other} vs keep: {c.verdict} (mean w_error ratio "
                    f"{ratio:.2g}, p = {c.p_value:.2g})"
                )
                differs.append(c.differs)
                s.answers[f"B{int(b)}/{other}"] = {"verdict": c.verdict, "p_value": c.p_value}
    fig, ax = new_figure()
    for i, (v, g) in enumerate(t.groupby("variant")):
        ax.errorbar(
            g["B"] + (i - 1) * 8,
            g["mean"],
            yerr=g["sd"].fillna(0),
            fmt="os^"[i],
            capsize=3,
            label=v,
        )
    ax.set_yscale("log")
    ax.set_xticks(sorted(t["B"].unique()))
    ax.set(
        xlabel="batch size B", ylabel="w_error (mean ± sd)", title="partial last batch, 240 updates"
    )
    ax.legend(fontsize=8)
    s.figure = save(fig, out, s.key)
    s.answer = (
        "n = 1000 is not a multiple of B: the last batch of an epoch has 100 (B = 300) or 200 "
        "(B = 400) examples. Keeping it and averaging over its real length, dropping it, and "
        "d2l's sgd dividing its summed loss by the nominal B (a shorter last step, exercise "
        "3.2.7) were compared at equal updates: "
        + "; ".join(verdicts)
        + (
            ". At equal updates the choice makes no measurable difference to the final error "
            "here; what differs is how many examples an epoch uses."
            if not any(differs)
            else ". Where a verdict above is not 'no measurable difference', the choice changes "
            "the endpoint beyond the seeds' spread."
        )
    )
