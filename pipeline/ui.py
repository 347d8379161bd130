"""``python -m pipeline.ui [--port 5000]``: the MLflow UI on this project's store.

Prints the URL and the latest sweep's parent run, then runs ``mlflow ui`` bound to 127.0.0.1
until Ctrl-C, which stops it cleanly.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from pipeline.queries import latest_sweep
from pipeline.tracking import StoreError, tracking_uri


def latest_sweep_url(uri: str, base: str) -> str | None:
    parent = latest_sweep(uri)
    if parent is None:
        return None
    return f"{base}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    uri = tracking_uri()
    base = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI: {base}  (store: {uri})")
    try:
        latest = latest_sweep_url(uri, base)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"latest sweep: {latest}" if latest else "no sweep yet: run `make sweep`")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        print("MLflow UI stopped")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
