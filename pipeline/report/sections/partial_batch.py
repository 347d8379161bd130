"""Partial batches: What happens when n is not divisible by the batch size?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.report.data import Section, SweepData, need, new_figure, save

SPEC = (
    "partial_batch",
    "Partial batches",
    "What happens when n is not divisible by the batch size?",
    "partial_batch",
)


def build(d: SweepData, s: Section, out: Path) -> None:
    rows = d.select(loss="mse", reduction="mean", n=1000, B=[300, 400], epochs=20, lr=0.1)
    rows = need(rows[rows["engine"] != "stacked"], varying="drop_last")
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
