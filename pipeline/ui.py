"""``python -m pipeline.ui [--port 5000]``: the MLflow UI on this project's store.

Prints the URL and the latest sweep's training runs view, then runs ``mlflow ui`` bound to
127.0.0.1 until Ctrl-C or SIGTERM, either of which stops its whole process tree (uvicorn, its
workers, MLflow's huey job consumers) and frees the port. With an http(s) tracking URI (the
team server of ``make server``) the server already serves the UI: only the URLs are printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from types import FrameType

from mlflow.entities import Run

from pipeline.context import StoreError, is_server, tracking_uri
from pipeline.queries import children, latest_sweep
from pipeline.server import (
    TrackingUnreachable,
    check_tracking_reachable,
    group_alive,
    port_in_use,
    stop_group,
)
from pipeline.store import ensure_experiment, get_client
from pipeline.views import runs_view_url, save_runs_view


def sweep_urls(uri: str, base: str, parent: Run) -> tuple[str, str]:
    """A sweep's two views, saved now (for sweeps that predate them, and so that the grouped
    view knows the sweep's cells and opens them collapsed): its runs, and its runs grouped
    by cell with the seeds' mean."""
    exp_id = parent.info.experiment_id
    cells = {c.data.tags["cell"] for c in children(uri, parent) if "cell" in c.data.tags}
    save_runs_view(get_client(uri), exp_id, parent.info.run_id, cells)
    run_id = parent.info.run_id
    return runs_view_url(base, exp_id, run_id), runs_view_url(base, exp_id, run_id, grouped=True)


def latest_sweep_urls(uri: str, base: str) -> tuple[str, str] | None:
    """The newest sweep's two views (:func:`sweep_urls`), None without a sweep; the
    experiment is tagged as a training experiment on the way."""
    parent = latest_sweep(uri)
    if parent is None:
        return None
    ensure_experiment(uri, "linreg")
    return sweep_urls(uri, base, parent)


def print_sweep_urls(uri: str, base: str) -> None:
    """The latest sweep's runs, and the same runs grouped by cell (mean over its seeds)."""
    urls = latest_sweep_urls(uri, base)
    if urls is None:
        print("no sweep yet: run `make sweep`", flush=True)
        return
    print(f"latest sweep: {urls[0]}")
    print(f"by cell (seeds averaged): {urls[1]}", flush=True)


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    uri = tracking_uri()
    if is_server(uri):
        try:
            check_tracking_reachable(uri)
        except TrackingUnreachable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"MLflow UI: {uri}  (the tracking server)")
        print_sweep_urls(uri, uri)
        return 0
    if port_in_use(args.port):
        print(f"error: port {args.port} on 127.0.0.1 is in use: make ui PORT=...", file=sys.stderr)
        return 1
    base = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI: {base}  (store: {uri})")
    try:
        print_sweep_urls(uri, base)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cmd = [
        *(sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri),
        *("--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"),
    ]
    # The server runs in its own session: Ctrl-C in the terminal reaches only us, and we stop
    # its whole process group, grandchildren included (a plain SIGINT/SIGTERM to the child
    # left uvicorn and the huey consumers running, with the port bound).
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    # MLflow's job runner (7 huey consumers, each importing MLflow: ~15 s of CPU on two cores)
    # serves GenAI features that training runs never use; the variable set to true restores it.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # ignore a second Ctrl-C/SIGTERM while stopping, so the stop is never cut short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if group_alive(proc.pid):
            stop_group(proc.pid)
        proc.wait()
        print("MLflow UI stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
