"""``make bench`` (Ray rows): the grid G (``sweep=bench``, 120 configs) end to end over Ray
against the in-process stacked and basic launchers, on this machine.

Each row is one ``python -m pipeline -m sweep=bench hydra/launcher=...`` into a fresh SQLite
store (the same command as ``make sweep``, so start-up is included). The Ray rows run on a
throwaway local head with 1 and with 2 CPUs (``pipeline.cluster``), started before the timer
and stopped after; each is the first sweep of its head, so it includes the workers' start
(imports of torch and MLflow in each worker).

``python -m pipeline.bench_ray [--cpus 1,2] [--launchers ray,ray_stacked] [--no-baselines]``
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

from pipeline import cluster
from pipeline.config import PROJECT_ROOT


def sweep_seconds(launcher: str, store: Path, extra_env: dict[str, str] | None = None) -> float:
    """Wall time of the bench sweep with ``launcher`` into a fresh store."""
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
        LINREG_OUTPUTS=str(store / "hydra"),
        **(extra_env or {}),
    )
    cmd = [sys.executable, "-m", "pipeline", "-m", "sweep=bench", f"hydra/launcher={launcher}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{launcher} sweep failed:\n{proc.stderr[-3000:]}")
    return seconds


def on_ray(launcher: str, cpus: int, tmp: Path) -> float:
    state = tmp / f"head-{launcher}-{cpus}"
    head = cluster.start(num_cpus=cpus, state_dir=state)
    try:
        return sweep_seconds(launcher, tmp / f"{launcher}-{cpus}", {"RAY_ADDRESS": head.address})
    finally:
        cluster.stop(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", default="1,2", help="local Ray CPUs to measure, e.g. 1,2")
    parser.add_argument("--launchers", default="ray,ray_stacked")
    parser.add_argument("--no-baselines", action="store_true", help="skip basic and stacked")
    args = parser.parse_args(argv)
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        if not args.no_baselines:
            for launcher in ("basic", "stacked"):
                rows[f"LAUNCHER={launcher} (in process)"] = sweep_seconds(launcher, tmp / launcher)
        for launcher in args.launchers.split(","):
            for cpus in (int(c) for c in args.cpus.split(",")):
                rows[f"LAUNCHER={launcher}, local Ray, {cpus} CPU"] = on_ray(launcher, cpus, tmp)
    print(
        f"linreg-sweep Ray bench, {time.strftime('%Y-%m-%d')}, {platform.node()}: "
        f"{os.cpu_count()} cores; make sweep SWEEP=bench (120 configs) end to end"
    )
    ref = rows.get("LAUNCHER=basic (in process)")
    width = max(len(k) for k in rows)
    for name, seconds in rows.items():
        ratio = f"{ref / seconds:6.2f}x basic" if ref else ""
        print(f"  {name:<{width}}  {seconds:7.1f} s  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
