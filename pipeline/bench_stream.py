"""``make bench`` (streaming rows): a job's peak memory against n, with its examples held in
memory or streamed in chunks, each job in a fresh process; and one epoch over n = 1e8 streamed,
trained by each code: the stacked engine, d2l 3.2's scratch code (a generator, ``yield``) and
d2l 3.3's ``nn.Linear`` (a ``DataLoader`` over an ``IterableDataset``).

Each row is one ``python -m pipeline data.source=... data.n=... train.batch_size=1000
train.epochs=1 optim.lr=0.3`` into a throwaway SQLite store. Its peak RSS is the child's own
high-water mark from ``os.wait4`` (the whole process: imports, MLflow and all), so no earlier
job of a long-lived process blurs it; the job's own numbers (``train_time_s``, ``peak_rss_mb``
above ``rss_start_mb``, ``data_mb``) are read back from the run it logged. Each code's 1e8
stream is held against the same code holding 1e4 examples in memory.

``python -m pipeline.bench_stream [--ns 1e4,1e6,1e7] [--big 1e8]``
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipeline.config import PROJECT_ROOT

SETTINGS = ["train.batch_size=1000", "train.epochs=1", "optim.lr=0.3"]
# the code that trains a row: the engine the sweeps use, and the two d2l codes
CODES = {
    "stacked": ["train.engine=stacked"],
    "scratch": ["model=scratch", "train.engine=d2l"],
    "linear": ["model=linear", "train.engine=d2l"],
}
BOUND_MB = 500.0  # the bound on the 1e8 stream's peak RSS
# what streaming may add to the peak of the same code holding a small data set in memory
OVER_SMALL_MB = 50.0


def run_job(source: str, n: int, code: str, store: Path) -> dict[str, float | str | int]:
    """One job in a fresh process: its wall time, the process's peak RSS, and what it logged."""
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, LINREG_OUTPUTS=str(store / "hydra"))
    cmd = [sys.executable, "-m", "pipeline", f"data.source={source}", f"data.n={n}"]
    cmd += [*SETTINGS, *CODES[code]]
    with open(store / "out.txt", "w") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out)
        # wait4, not wait: the rusage of this child alone (RUSAGE_CHILDREN is the max over all)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(store / 'out.txt').read_text()[-2000:]}")
    from pipeline import queries  # the one read layer (MLflow loads only now)

    experiment = queries.experiment_id(uri, "linreg")
    assert experiment is not None
    (run,) = queries.search_all(uri, experiment)
    m = run.data.metrics
    return {
        "source": source,
        "n": n,
        "code": code,
        "wall s": wall,
        "train s": m["train_time_s"],
        "process peak RSS (MB)": usage.ru_maxrss * 1024 / 1e6,  # Linux: KiB
        "job's peak above its start (MB)": m["peak_rss_mb"] - m["rss_start_mb"],
        "examples held (MB)": m["data_mb"],
        "w_error": m["w_error"],
        "OLS w_error": m["ols_w_error"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ns", default="1e4,1e6,1e7", help="n of the memory-vs-stream rows")
    parser.add_argument("--big", default="1e8", help="n of the streamed-only rows (0: none)")
    args = parser.parse_args(argv)
    ns = [int(float(x)) for x in args.ns.split(",")]
    big, small = int(float(args.big)), min(ns)
    jobs = [(source, n, "stacked") for n in ns for source in ("memory", "stream")]
    if big:
        jobs += [("memory", small, code) for code in CODES if code != "stacked"]
        jobs += [("stream", big, code) for code in CODES]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_job(s, n, c, Path(tmp) / f"{s}-{n}-{c}") for s, n, c in jobs]
    table = pd.DataFrame(rows)
    print(
        f"linreg-sweep streaming bench, {time.strftime('%Y-%m-%d')}, {platform.node()}: "
        f"{os.cpu_count()} cores; one job per process: {' '.join(SETTINGS)}, d = 2, float64"
    )
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if not big:
        return 0
    ok = True
    print()
    for code in CODES:
        streamed = table[(table["source"] == "stream") & (table["n"] == big)]
        held = table[(table["source"] == "memory") & (table["n"] == small)]
        last = streamed[streamed["code"] == code].iloc[0]
        base = float(held[held["code"] == code]["process peak RSS (MB)"].iloc[0])
        peak = float(last["process peak RSS (MB)"])
        within = peak - base <= OVER_SMALL_MB
        ok &= within
        print(
            f"{code}: stream n = {big:.0e} in {last['wall s']:.0f} s wall "
            f"({last['train s']:.0f} s training), peak RSS {peak:.0f} MB "
            f"({'≤' if peak <= BOUND_MB else '>'} {BOUND_MB:.0f} MB); the same code holding "
            f"n = {small} in memory: {base:.0f} MB, so streaming adds {peak - base:.0f} MB "
            f"(bound {OVER_SMALL_MB:.0f} MB: {'met' if within else 'NOT met'})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
