"""Streaming: What if the data set does not fit in memory, and what does a generator buy?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import stats, theory
from pipeline.report.data import MissingRuns, Section, SweepData, need, new_figure, save
from pipeline.report.sections.common import base, log_ticks, mean_sd, seeds_label

SPEC = (
    "streaming",
    "Data that does not fit in memory",
    "`data_iter` loads every example into memory: what if the data set is huge? What are the "
    "advantages of a generator (`yield`)?",
    "streaming",
)

SOURCES = ("memory", "stream")
# the 1e8-example run of `make sweep SWEEP=stream_big` (any sweep's, newest first)
BIG_FILTER = "params.`data.source` = 'stream' and metrics.n >= 100000000"
# Rules on the peak RSS above the job's start against n (medians over seeds: the first job a
# process trains also pays the libraries' one-time allocations). In memory it grows ∝ n: log-log
# slope > 0.8. Streamed it stays flat: over the same n range it rises by less than a tenth of the
# in-memory rise, and at the largest n it is under a quarter of the in-memory peak. (Not a slope
# threshold: a stream's peak is a couple of MB of per-job allocations, whose slope is noise.)
SLOPE_GROWS, FLAT_RISE, FLAT_SHARE = 0.8, 0.1, 0.25
BOUND_MB = 500.0  # the bound on the peak RSS of the 1e8-example stream's process


def slope(ns: Any, values: Any) -> float:
    """Log-log slope of the finite, positive values (nan with fewer than two)."""
    n, v = np.asarray(ns, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(v) & (v > 0)
    return theory.loglog_slope(n[ok], v[ok]) if ok.sum() >= 2 else math.nan


def per_source(rows: pd.DataFrame) -> dict[str, dict[str, list[Any]]]:
    """answers.json: per source, one entry per n (ascending) of each measured number."""
    out: dict[str, dict[str, list[Any]]] = {}
    for source, g in rows.groupby("source"):
        cells = [c for _, c in g.groupby("n")]
        out[str(source)] = {
            "data_mb": [float(c["data_mb"].iloc[0]) for c in cells],
            "peak_rss_mb": [stats.summarize(c["peak_rss_mb"])["mean"] for c in cells],
            "peak_above_start_mb": [stats.summarize(c["above"])["mean"] for c in cells],
            "peak_above_start_sd": [stats.summarize(c["above"])["sd"] for c in cells],
            "peak_above_start_median": [float(c["above"].median()) for c in cells],
            "train_time_s": [stats.summarize(c["train_time_s"])["mean"] for c in cells],
            "w_error": [stats.summarize(c["w_error"])["mean"] for c in cells],
            "ols_w_error_rms": [stats.rms(c["ols_w_error"]) for c in cells],
            "seeds": [len(c) for c in cells],
        }
    return out


def big_run(d: SweepData) -> dict[str, Any] | None:
    """The newest FINISHED 1e8-example stream run in the experiment, if any."""
    runs = d.beyond(BIG_FILTER)
    if runs.empty or "metrics.peak_rss_mb" not in runs:
        return None
    r = runs.iloc[0]
    peak, start = float(r["metrics.peak_rss_mb"]), float(r.get("metrics.rss_start_mb", math.nan))
    return {
        "n": int(r["params.data.n"]),
        "engine": str(r.get("tags.engine", "")),
        "peak_rss_mb": peak,
        "peak_above_start_mb": peak - start,
        "data_mb": float(r["metrics.data_mb"]),
        "seconds": float(r["metrics.train_time_s"]),
        "w_error": float(r["metrics.w_error"]),
        "ols_w_error": float(r["metrics.ols_w_error"]),
        "run_id": str(r["run_id"]),
        "within_500_mb": peak <= BOUND_MB,
    }


def build(d: SweepData, s: Section, out: Path) -> None:
    rows = d.select(**base("source", "n", "epochs"), source=list(SOURCES), B=1000, epochs=1, lr=0.3)
    rows = need(rows, varying="n")
    if rows["source"].nunique() < 2:
        raise MissingRuns
    rows = s.use(rows[~rows["diverged"]]).assign(above=lambda r: r.peak_rss_mb - r.rss_start_mb)
    dd, sigma = int(rows["d"].iloc[0]), float(rows["noise"].iloc[0])
    chunk = int(rows.loc[rows["source"] == "stream", "chunk_size"].iloc[0])

    table = []
    verdicts: dict[str, str] = {}
    for (n, source), g in rows.groupby(["n", "source"]):
        table.append(
            {
                "n": int(n),
                "source": source,
                "examples held (MB)": float(g["data_mb"].iloc[0]),
                "peak RSS above start (MB), median": float(g["above"].median()),
                "mean ± sd": mean_sd(g["above"]),
                "process peak RSS (MB)": mean_sd(g["peak_rss_mb"]),
                "train time (s)": mean_sd(g["train_time_s"]),
                "w_error": mean_sd(g["w_error"]),
                "OLS w_error (RMS)": stats.rms(g["ols_w_error"]),
                "OLS theory σ√(d/(n−d−2))": theory.ols_error(dd, int(n), sigma),
                "seeds": seeds_label(g["seed"]),
            }
        )
    for n, g in rows.groupby("n"):
        mem, stream = (np.log(g.loc[g["source"] == k, "w_error"]) for k in SOURCES)
        verdicts[str(int(n))] = stats.compare(stream, mem).verdict
    s.tables.append(
        (
            f"One epoch, B = 1000, lr 0.3, d = {dd} (the same settings at every n and for both "
            f"sources); the stream draws {chunk} examples at a time. Peak RSS: the process's "
            "high-water mark while the job trained, above the RSS it started from (median, "
            "and mean ± sd over seeds: the first job a process trains also pays the libraries' "
            "one-time allocations). OLS: least squares on the same examples, in memory by "
            "lstsq, for the stream from AᵀA and Aᵀy summed chunk by chunk. One epoch settles "
            "no run (outcome unconverged) and none needs to: memory and the two sources' "
            "equal footing are the question, so every run that did not diverge is in.",
            pd.DataFrame(table),
        )
    )

    answers = per_source(rows)
    ns = sorted(int(n) for n in rows["n"].unique())
    mem, stm = answers["memory"], answers["stream"]
    medians = {k: answers[k]["peak_above_start_median"] for k in SOURCES}
    slopes = {k: slope(ns, medians[k]) for k in SOURCES}
    data_slopes = {k: slope(ns, answers[k]["data_mb"]) for k in SOURCES}
    measured = all(math.isfinite(v) for v in slopes.values())
    top = len(ns) - 1
    grows = measured and slopes["memory"] > SLOPE_GROWS
    share = medians["stream"][top] / medians["memory"][top]
    rises = {k: medians[k][top] - medians[k][0] for k in SOURCES}
    rise = rises["stream"] / rises["memory"]
    flat = measured and rise < FLAT_RISE and share < FLAT_SHARE
    s.answers = {
        "n": ns,
        "chunk_size": chunk,
        "memory": mem,
        "stream": stm,
        "memory_slope": slopes["memory"],
        "stream_slope": slopes["stream"],
        "memory_data_slope": data_slopes["memory"],
        "stream_data_slope": data_slopes["stream"],
        "memory_grows_with_n": bool(grows),
        "stream_flat": bool(flat),
        "stream_over_memory_peak": share,
        "stream_rise_over_memory_rise": rise,
        "w_error_stream_vs_memory": verdicts,
    }
    big = big_run(d)
    if big is not None:
        s.answers["big"] = big
        s.run_ids = sorted(set(s.run_ids) | {big["run_id"]})
        s.tables.append(
            (
                f"The largest stream in the store (run {big['run_id']}, one seed, one epoch, "
                "trained alone in its process, so its peak above start includes the "
                "libraries' one-time allocations).",
                pd.DataFrame(
                    [
                        {
                            "n": big["n"],
                            "engine": big["engine"],
                            "examples held (MB)": big["data_mb"],
                            "process peak RSS (MB)": big["peak_rss_mb"],
                            "peak RSS above start (MB)": big["peak_above_start_mb"],
                            "train time (s)": big["seconds"],
                            "w_error": big["w_error"],
                            "OLS w_error (streamed)": big["ols_w_error"],
                        }
                    ]
                ),
            )
        )

    fig, ax = new_figure()
    styles = {"memory": ("o-", "C0"), "stream": ("s-", "C1")}
    for source in SOURCES:
        fmt, color = styles[source]
        a = answers[source]
        ax.plot(ns, medians[source], fmt, color=color, label=f"{source}: peak RSS above start")
        ax.plot(ns, a["data_mb"], ":", color=color, label=f"{source}: examples held")
    if big is not None:
        ax.plot([big["n"]], [big["peak_above_start_mb"]], "s", color="C1", mfc="none", ms=9)
        ax.annotate(
            f"n = {big['n']:.0e}, alone in its process",
            (big["n"], big["peak_above_start_mb"]),
            textcoords="offset points",
            xytext=(-60, 10),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax, ns + ([big["n"]] if big is not None else []))
    ax.set(xlabel="n (examples)", ylabel="MB (median over seeds)", title="memory vs data size")
    ax.legend(fontsize=8, loc="upper left")
    s.figure = save(fig, out, s.key)

    bytes_per = mem["data_mb"][top] * 1e6 / ns[top]
    ratio = medians["memory"][top] / mem["data_mb"][top]
    time_ratio = stm["train_time_s"][top] / mem["train_time_s"][top]
    same = [n for n, v in verdicts.items() if v == stats.NO_DIFFERENCE]
    memory_text = (
        f"Held in memory, every example costs {bytes_per:.0f} bytes ({dd} features and the "
        f"label in float64): {mem['data_mb'][top]:.3g} MB at n = {ns[top]}, and the training's "
        f"peak RSS grows with n (log-log slope {slopes['memory']:.2f} of the medians over seeds"
        + (", i.e. ∝ n" if grows else "")
        + f"), reaching {medians['memory'][top]:.3g} MB above its start at n = "
        f"{ns[top]}: {ratio:.1f}× the examples themselves, because the bias column, each "
        "epoch's shuffled copy, the residuals and least squares' workspace are n-sized too. "
        f"Streamed, {chunk} examples are drawn at a time ({stm['data_mb'][top]:.2g} MB held "
        f"at every n) and the peak "
        + (
            f"stays flat: {medians['stream'][0]:.2g} MB at n = {ns[0]}, "
            f"{medians['stream'][top]:.2g} MB at n = {ns[top]}: it rose by {rise:.1%} of the "
            f"in-memory rise and is {share:.1%} of the in-memory peak. "
            if flat
            else f"does not stay flat here: {medians['stream'][0]:.2g} MB at n = "
            f"{ns[0]}, {medians['stream'][top]:.2g} MB at n = {ns[top]} ({rise:.0%} of the "
            f"in-memory rise, {share:.0%} of the in-memory peak). "
        )
        if measured
        else "Peak RSS was not measured here (it needs Linux's /proc); by the bytes held, "
        f"memory grows ∝ n (slope {data_slopes['memory']:.2f}) and the stream stays at one "
        f"chunk (slope {data_slopes['stream']:.2f}). "
    )
    big_text = (
        f"One epoch over n = {big['n']:.0e} streamed examples ({big['engine']} engine) took "
        f"{big['seconds']:.0f} s and the process peaked at {big['peak_rss_mb']:.0f} MB "
        f"({'within' if big['within_500_mb'] else 'above'} the {BOUND_MB:.0f} MB asked for; "
        f"{big['peak_above_start_mb']:.0f} MB above its start, the rest being torch, MLflow "
        f"and Hydra); in memory those examples alone would take "
        f"{big['n'] * bytes_per / 1e6:.0f} MB. Its w_error {big['w_error']:.2g}, against "
        f"{big['ols_w_error']:.2g} for least squares from the streamed AᵀA and Aᵀy"
        + (
            " (constant-lr SGD stops at its noise floor, see the data size section; least "
            "squares keeps improving with n). "
            if big["w_error"] > 2 * big["ols_w_error"]
            else ". "
        )
        if big is not None
        else "The 1e8-example stream is `make sweep SWEEP=stream_big` (or a `make bench` "
        "row); this store has no such run yet. "
    )
    s.answer = (
        memory_text
        + big_text
        + "The estimate does not suffer: w_error of the stream against memory at each n: "
        + "; ".join(f"n = {n}: {v}" for n, v in verdicts.items())
        + f" (Welch's t-test on log w_error; {len(same)} of {len(verdicts)} the same). "
        "What a generator buys: d2l's `data_iter` is already one (it hands out a batch only "
        "when the loop asks), but it slices tensors that hold every example. A generator that "
        "produces the next chunk only when the batches before it are used up (here drawn "
        "from its own seed; in practice read from disk or the network) keeps memory at one "
        "chunk whatever n is, starts training at once, and is what a `DataLoader` iterates "
        "through an `IterableDataset`. The costs: no global shuffle (a stream is shuffled "
        "within a chunk, so its order must already be random: here the examples are iid), "
        "every further pass draws or reads the data again (here each example is drawn three "
        "times: for the initial metrics, the epoch and the final metrics; the stream's "
        f"training took {time_ratio:.1f}× the in-memory time at n = {ns[top]}"
        + (
            ", the in-memory path paying instead for its n-sized copies and a least squares "
            "on all n rows)"
            if time_ratio < 1.2
            else ")"
        )
        + ", and exact full-data quantities must be sums over chunks (the loss, the mse, "
        "and least squares through its sufficient statistics AᵀA and Aᵀy)."
    )
