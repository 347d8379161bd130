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
from dataclasses import dataclass
from pathlib import Path

from pipeline import cluster
from pipeline.config import PROJECT_ROOT


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall time of the whole command, start-up included
    peak_mib: float  # peak resident memory of the command's largest process


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path = PROJECT_ROOT) -> Measured:
    """Run ``cmd`` to completion: its wall time and peak RSS (``wait4``'s rusage of this one
    child: the largest of it and the processes it waited for). Raises with its output's tail
    if it fails."""
    with tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.returncode != 0:
            out.seek(0)
            tail = out.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return Measured(seconds, usage.ru_maxrss / 1024)


def sweep_env(store: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a sweep into the SQLite store in ``store`` (outputs beside it)."""
    return dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
        LINREG_OUTPUTS=str(store / "hydra"),
        **(extra_env or {}),
    )


def measure_sweep(
    launcher: str,
    store: Path,
    extra_env: dict[str, str] | None = None,
    preset: str = "bench",
    args: tuple[str, ...] = (),
) -> Measured:
    """``make sweep SWEEP=preset LAUNCHER=launcher ARGS=args`` into the store in ``store``."""
    cmd = [sys.executable, "-m", "pipeline", "-m", f"sweep={preset}", f"hydra/launcher={launcher}"]
    return run_measured([*cmd, *args], sweep_env(store, extra_env))


def sweep_seconds(launcher: str, store: Path, extra_env: dict[str, str] | None = None) -> float:
    """Wall time of the bench sweep with ``launcher`` into a fresh store."""
    return measure_sweep(launcher, store, extra_env).seconds


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
