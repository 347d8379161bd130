"""Zero initialisation: Does zero initialisation still work?"""

from __future__ import annotations

from pathlib import Path

from pipeline.report.data import Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import BASE

SPEC = ("init", "Zero initialisation", "Does zero initialisation still work?", "init")


def build(d: SweepData, s: Section, out: Path) -> None:
    common = {k: v for k, v in BASE.items() if k != "init"}
    rows = d.select(**common, lr=0.03, lr_scaling="none", B=10, seed=0)
    rows = need(rows[rows["engine"] != "stacked"], varying="init")
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
