"""``make bench`` (streaming rows): a job's peak memory against n, with its examples held in
memory or streamed in chunks, each job in a fresh process; and one epoch over n = 1e8 streamed.

Each row is one ``python -m pipeline data.source=... data.n=... train.batch_size=1000
train.epochs=1 optim.lr=0.3`` (the default model: d2l 3.3's ``nn.Linear``, whose
``DataLoader`` iterates the stream as an ``IterableDataset``) into a throwaway SQLite store.
Its peak RSS is the child's own high-water mark from ``os.wait4`` (the whole process: imports,
MLflow and all), so no earlier job of a long-lived process blurs it; the job's own numbers
(``train_time_s``, ``peak_rss_mb`` above ``rss_start_mb``, ``data_mb``) are read back from the
run it logged.

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
BOUND_MB = 500.0  # the bound on the 1e8 stream's peak RSS
# what streaming may add to the peak of the same app holding a small data set in memory
OVER_SMALL_MB = 50.0


def run_job(source: str, n: int, store: Path) -> dict[str, float | str | int]:
    """One job in a fresh process: its wall time, the process's peak RSS, and what it logged."""
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, LINREG_OUTPUTS=str(store / "hydra"))
    cmd = [sys.executable, "-m", "pipeline", f"data.source={source}", f"data.n={n}", *SETTINGS]
    with open(store / "out.txt", "w") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out)
        # wait4, not wait: the rusage of this child alone (RUSAGE_CHILDREN is the max over all)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(store / 'out.txt').read_text()[-2000:]}")
    from pipeline.tracking import get_client

    client = get_client(uri)
    experiment = client.get_experiment_by_name("linreg")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    m = run.data.metrics
    return {
        "source": source,
        "n": n,
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
    parser.add_argument("--big", default="1e8", help="n of the streamed-only row (0: none)")
    args = parser.parse_args(argv)
    ns = [int(float(x)) for x in args.ns.split(",")]
    big = int(float(args.big))
    jobs = [(source, n) for n in ns for source in ("memory", "stream")]
    jobs += [("stream", big)] if big else []
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_job(s, n, Path(tmp) / f"{s}-{n}") for s, n in jobs]
    table = pd.DataFrame(rows)
    print(
        f"linreg-sweep streaming bench, {time.strftime('%Y-%m-%d')}, {platform.node()}: "
        f"{os.cpu_count()} cores; one job per process: {' '.join(SETTINGS)}, d = 2, float64"
    )
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if not big:
        return 0
    last = table.iloc[-1]
    small = table[(table["source"] == "memory") & (table["n"] == min(ns))].iloc[0]
    peak, base = float(last["process peak RSS (MB)"]), float(small["process peak RSS (MB)"])
    print(
        f"\nstream n = {big:.0e}: {last['wall s']:.0f} s wall ({last['train s']:.0f} s training), "
        f"peak RSS {peak:.0f} MB; the same app holding n = {min(ns)} in memory peaks at "
        f"{base:.0f} MB: streaming {big:.0e} examples adds {peak - base:.0f} MB "
        f"(bound {OVER_SMALL_MB:.0f} MB: {'met' if peak - base <= OVER_SMALL_MB else 'NOT met'})."
    )
    print(
        f"absolute bound {BOUND_MB:.0f} MB: {'met' if peak <= BOUND_MB else 'not met'} "
        f"({peak:.0f} MB; the app's own imports, torch, MLflow, Hydra and the deterministic "
        f"mode's torch._inductor, take about {base:.0f} MB before any data)."
    )
    return 0 if peak - base <= OVER_SMALL_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
