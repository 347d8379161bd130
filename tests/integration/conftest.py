"""The session's services, started once and at once: one PostgreSQL + ``mlflow server`` and one
Ray head (each costs 10-20 s to start, mostly waiting), on free loopback ports, each started in
a thread as soon as the first integration test needs either, and stopped by their PIDs in the
finalizer whatever the tests did. Only what the selected tests use is started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline import cluster
from pipeline.config import PROJECT_ROOT
from pipeline.server import ServerInfo, port_in_use, process_alive, start_server, stop_server

# fixture -> the service it needs started (a test that uses neither starts nothing)
SERVICE_FIXTURES = {"mlflow_server": "server", "ray_head": "ray", "spare_ray_head": "spare_ray"}


@dataclass
class Services:
    root: Path  # the server's directory (PostgreSQL data, artifacts, logs)
    ray_state: Path
    spare_state: Path
    started: dict[str, Future] = field(default_factory=dict)


def wanted(session: pytest.Session) -> set[str]:
    return {
        service
        for item in session.items
        for name, service in SERVICE_FIXTURES.items()
        if name in getattr(item, "fixturenames", ())
    }


@pytest.fixture(scope="session")
def services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    # Not under pytest's tmp dirs: they are mode 0700 and, as root, postgres runs as its own
    # user, which must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="linreg-server-"))
    root.chmod(0o755)
    s = Services(root, tmp_path_factory.mktemp("ray"), tmp_path_factory.mktemp("spare-ray"))
    need = wanted(request.session)
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="start")
    if "server" in need:
        s.started["server"] = pool.submit(start_server, root, durable=False)  # fsync off
    if "ray" in need:
        s.started["ray"] = pool.submit(
            cluster.start, num_cpus=2, state_dir=s.ray_state, object_store_mb=100
        )
    if "spare_ray" in need:  # a second, smaller head: what cluster-stop must leave alone
        s.started["spare_ray"] = pool.submit(
            cluster.start, num_cpus=1, state_dir=s.spare_state, object_store_mb=80
        )
    try:
        yield s
    finally:
        pool.shutdown(wait=True)  # a start still under way finishes, so it can be stopped
        try:
            stop_ray(s)
        finally:
            try:
                stop_team_server(s)
            finally:
                shutil.rmtree(root, ignore_errors=True)


def stop_ray(s: Services) -> None:
    if "ray" in sys.modules:  # this process's driver connection (the in-process sweeps)
        sys.modules["ray"].shutdown()
    for name, state in (("ray", s.ray_state), ("spare_ray", s.spare_state)):
        future = s.started.get(name)
        if future is None or future.exception() is not None:
            cluster.stop(state)  # (a failed start cleaned up after itself; this is a no-op)
            continue
        head = future.result()
        cluster.stop(state)
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        left = [ln for ln in ps.splitlines() if head.temp_dir in ln]
        assert not head.pids() and not left, f"Ray processes left: {left}"


def stop_team_server(s: Services) -> None:
    future = s.started.get("server")
    if future is None:
        return
    stop_server(s.root)
    if future.exception() is None:
        info = future.result()
        # what `make server-stop` promises: no process left and both ports free
        assert not process_alive(info.mlflow_pid) and not process_alive(info.postgres_pid)
        assert not port_in_use(info.port) and not port_in_use(info.pg_port)


@pytest.fixture(scope="session")
def server_root(services: Services) -> Path:
    return services.root


@pytest.fixture(scope="session")
def mlflow_server(services: Services) -> ServerInfo:
    info: ServerInfo = services.started["server"].result()
    return info


@pytest.fixture(scope="session")
def ray_head(services: Services) -> cluster.Head:
    head: cluster.Head = services.started["ray"].result()
    return head


@pytest.fixture(scope="session")
def spare_ray_head(services: Services) -> tuple[cluster.Head, Path]:
    """A second head and its state dir, for the test that stops it (and only it)."""
    head: cluster.Head = services.started["spare_ray"].result()
    return head, services.spare_state


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
