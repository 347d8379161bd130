"""Huber vs MSE: What does Huber loss buy, on clean data and with outliers?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.report.data import Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import BASE

SPEC = (
    "huber",
    "Huber vs MSE",
    "What does Huber loss buy, on clean data and with outliers?",
    "loss",
)


def build(d: SweepData, s: Section, out: Path) -> None:
    common = {k: v for k, v in BASE.items() if k not in ("loss", "outliers")}
    common.update(lr=0.03, lr_scaling="none", B=10, model="linear", delta=1.0)
    rows = need(d.select(**common, seed=0), varying="loss")
    table = rows.pivot_table(index="loss", columns="data", values=["w_error", "b_error"])
    table.columns = [f"{metric} ({data})" for metric, data in table.columns]
    s.table = table
    seeds = d.select(**common, loss=["mse", "huber"])
    seeds = seeds if seeds["seed"].nunique() > 1 else seeds.iloc[:0]
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
