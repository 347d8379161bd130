"""One PostgreSQL + ``mlflow server`` for the whole session (starting one costs 10-20 s),
on free loopback ports, stopped by its PIDs in the finalizer whatever the tests did."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT
from pipeline.server import ServerInfo, port_in_use, process_alive, start_server, stop_server


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    # Not under pytest's tmp dirs: they are mode 0700 and, as root, postgres runs as its own
    # user, which must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="linreg-server-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(server_root: Path) -> Iterator[ServerInfo]:
    info = start_server(server_root, durable=False)  # fsync off: a throwaway store
    try:
        yield info
    finally:
        stop_server(server_root)
        # what `make server-stop` promises: no process left and both ports free
        assert not process_alive(info.mlflow_pid) and not process_alive(info.postgres_pid)
        assert not port_in_use(info.port) and not port_in_use(info.pg_port)


@pytest.fixture
def on_server(mlflow_server: ServerInfo, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's MLflow calls (and its subprocesses) go to the session's server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return mlflow_server.uri


def run_pipeline(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline ARGS`` in the project, with this test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )
