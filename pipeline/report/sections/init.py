"""Zero initialisation: Does zero initialisation still work?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from pipeline import stats
from pipeline.report.data import Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import base, spread

SPEC = ("init", "Zero initialisation", "Does zero initialisation still work?", "init")


def build(d: SweepData, s: Section, out: Path) -> None:
    rows = d.select(**base("init"), lr=0.03, lr_scaling="none", B=10, model="linear")
    rows = s.use(need(rows, varying="init"))
    t = spread(rows, ["init"], "w_error")
    curves = {r: d.history(r, "w_error") for r in rows["run_id"]}
    start = rows.assign(start=rows["run_id"].map(lambda r: curves[r][0]))
    t["w_error at epoch 0 (mean)"] = t["init"].map(start.groupby("init")["start"].mean())
    s.table = t[["init", "w_error at epoch 0 (mean)", "w_error (mean ± sd)", "seeds", "left out"]]
    normal = np.log(rows.loc[rows["init"] == "normal", "w_error"])
    verdicts = {
        init: stats.compare(np.log(g["w_error"]), normal)
        for init, g in rows.groupby("init")
        if init != "normal"
    }
    s.answers = {init: c.verdict for init, c in verdicts.items()}
    fig, ax = new_figure()
    styles = {"normal": "o-", "xavier": "s--", "zeros": "^:", "kaiming": "d-."}
    for init, g in rows.groupby("init"):
        of_init = np.array([curves[r] for r in g["run_id"]])
        epochs = np.arange(of_init.shape[1])
        ax.errorbar(
            epochs,
            of_init.mean(0),
            yerr=of_init.std(0, ddof=1),
            fmt=styles.get(init, "o-"),
            capsize=3,
            label=f"{init} ({len(g)} seeds)",
        )
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="w_error (mean ± sd)", title="initialisation")
    ax.legend()
    s.figure = save(fig, out, s.key)
    same = all(not c.differs for c in verdicts.values())
    s.answer = (
        ("Yes. " if same else "Mostly. ")
        + "The loss is convex in (w, b) with a single minimum, and a linear model with one "
        "output has no hidden units whose symmetry zeros would fail to break. Final w_error "
        "against the normal init: "
        + "; ".join(f"{k}: {c.verdict}" for k, c in verdicts.items())
        + " (Welch's t-test on log w_error over the seeds)."
    )
