"""Sweeps on a real Ray head, tracked through a real MLflow server, both on loopback ports.

One head (2 CPUs) and one server per session, each stopped by PID in a finalizer even when a
test fails. ``tracking_server_uri`` is a plain ``mlflow server`` on SQLite here; the team
server fixture (PostgreSQL, issue 13) replaces it unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import Run

from pipeline import cluster
from pipeline.server import ServerInfo
from pipeline.steps import TIMED_PROBES
from pipeline.tracking import MACHINE_METRICS
from tests.test_sweep import CONTRACT

pytestmark = pytest.mark.integration

# 4 jobs: both models' codes (the Ray launcher runs each alone), one lr that trains and one
# that diverges; the stacked launcher trains them as one group
GRID = ["model=linear,scratch", "optim.lr=0.03,3", "seed=0"]
# 4 jobs in 2 stacked groups (one per seed), so that a lost task leaves the other one's jobs
KILL_GRID = ["model=linear,scratch", "optim.lr=0.03", "seed=0,1"]
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "default_worker", "dashboard", "log_monitor")


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


@pytest.fixture(scope="session")
def tracking_server_uri(mlflow_server: ServerInfo) -> str:
    """The team server of the session (PostgreSQL + mlflow server, tests/integration/conftest)."""
    return mlflow_server.uri


@pytest.fixture
def on_cluster(
    ray_head: cluster.Head,
    tracking_server_uri: str,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[mlflow.MlflowClient]:
    """Jobs go to the session's head and server. The worker environment is the same in every
    test (so this process's Ray connection and its workers are reused across tests)."""
    monkeypatch.setenv("RAY_ADDRESS", ray_head.address)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server_uri)
    outputs = tmp_path_factory.getbasetemp() / "ray-hydra"
    monkeypatch.setenv("LINREG_OUTPUTS", str(outputs))
    yield mlflow.MlflowClient(tracking_uri=tracking_server_uri)


def run_app(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """A sweep in this process (the driver); its jobs run on the cluster."""
    from pipeline.__main__ import main

    monkeypatch.setattr(sys, "argv", ["pipeline", "-m", *args])
    GlobalHydra.instance().clear()
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


def runs_of(client: mlflow.MlflowClient, experiment: str) -> tuple[list[Run], list[Run]]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def by_name(children: list[Run]) -> dict[str, dict[str, float]]:
    """Every metric of every child but the wall times and memory of its training (the
    machine's, not the computation's: also the scratch code's per-update backward time)."""
    machine = MACHINE_METRICS | TIMED_PROBES
    return {
        c.info.run_name: {k: v for k, v in c.data.metrics.items() if k not in machine}
        for c in children
    }


@pytest.mark.parametrize(("launcher", "reference"), [("ray", "basic"), ("ray_stacked", "stacked")])
def test_sweep_on_ray_equals_in_process(
    launcher: str,
    reference: str,
    on_cluster: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, exp = on_cluster, f"ray-{launcher}"
    run_app(monkeypatch, f"hydra/launcher={launcher}", f"tracking.experiment={exp}", *GRID)
    parents, children = runs_of(client, exp)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_failed"] == 0
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert len({c.data.tags["config_hash"] for c in children}) == 4
    assert len({c.data.tags["pid"] for c in children}) >= 2 - (launcher == "ray_stacked")
    assert os.getpid() not in {int(c.data.tags["pid"]) for c in children}  # on the workers
    for child in children:
        assert child.info.status == "FINISHED"
        diverged = child.data.tags["diverged"] == "true"
        assert diverged == (child.data.params["optim.lr"] == "3.0")
        missing = CONTRACT - set(child.data.metrics)
        assert missing <= ({"train_loss", "mse", "w_error", "b_error"} if diverged else set())

    # the same engine in this process gives bit-identical numbers
    ref_exp = f"ref-{reference}"
    run_app(monkeypatch, f"hydra/launcher={reference}", f"tracking.experiment={ref_exp}", *GRID)
    assert by_name(children) == by_name(runs_of(client, ref_exp)[1])
    one = children[0].info.run_id
    twin = [c for c in runs_of(client, ref_exp)[1] if c.info.run_name == children[0].info.run_name]
    for key in ("batch_loss", "mse"):
        ours = [(m.step, m.value) for m in client.get_metric_history(one, key)]
        theirs = [(m.step, m.value) for m in client.get_metric_history(twin[0].info.run_id, key)]
        assert ours == theirs

    # again: everything is cached, nothing is created
    run_app(monkeypatch, f"hydra/launcher={launcher}", f"tracking.experiment={exp}", *GRID)
    parents, children = runs_of(client, exp)
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.metrics["n_cached"] == 4


def busy_workers(head: cluster.Head, title: str) -> list[int]:
    def title_of(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            return ""

    return [pid for pid in head.pids() if title_of(pid).startswith(title)]


@pytest.mark.parametrize(
    ("launcher", "title", "retries"),
    [("ray", "ray::_run_job", None), ("ray_stacked", "ray::run_group", 0)],
)
def test_killing_a_worker_mid_sweep(
    launcher: str,
    title: str,
    retries: int | None,
    ray_head: cluster.Head,
    on_cluster: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL a worker while it runs a job: Ray retries its task (ray: max_retries) or the
    sweep reports its jobs failed (ray_stacked with max_retries=0); either way no child stays
    RUNNING, and a second sweep finishes the rest without a duplicate run."""
    client, exp = on_cluster, f"kill-{launcher}"
    # slower jobs (2000 updates each), so that the kill lands mid-job
    args = [
        f"hydra/launcher={launcher}",
        f"tracking.experiment={exp}",
        "data.n=2000",
        "train.batch_size=1",
        "train.epochs=1",
        "train.log_every=100",
        *KILL_GRID,
    ]
    first = args + ([] if retries is None else [f"hydra.launcher.max_retries={retries}"])
    # the sweep's driver in a thread of this process, while this thread kills a worker
    outcome: list[BaseException | None] = []

    def sweep() -> None:
        try:
            run_app(monkeypatch, *first)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    driver = threading.Thread(target=sweep)
    driver.start()
    try:
        victim = wait_for(lambda: busy_workers(ray_head, title), 60, "a busy worker")[0]
        os.kill(victim, signal.SIGKILL)
    finally:
        driver.join(timeout=120)
    assert not driver.is_alive() and outcome
    parents, children = runs_of(client, exp)
    assert len(parents) == 1
    assert not [c for c in children if c.info.status == "RUNNING"]
    finished = [c.data.tags["config_hash"] for c in children if c.info.status == "FINISHED"]
    assert len(finished) == len(set(finished))
    if retries == 0:  # the lost task's jobs are reported failed: the sweep exits 1
        assert isinstance(outcome[0], SystemExit) and outcome[0].code == 1, outcome
        assert 0 < parents[0].data.metrics["n_failed"] < 4
    else:  # Ray re-ran the lost task
        assert outcome == [None]
        assert len(finished) == 4
    # the killed attempt's run (if it had begun) was closed, not left RUNNING
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)

    # a second sweep (retries on) finishes what is missing, without duplicating anything
    run_app(monkeypatch, *args)
    parents, children = runs_of(client, exp)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = [c.data.tags["config_hash"] for c in children if c.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 4
    assert not [c for c in children if c.info.status == "RUNNING"]


def test_stopping_a_head_leaves_other_rays_alone(
    ray_head: cluster.Head, spare_ray_head: tuple[cluster.Head, Path]
) -> None:
    """cluster-stop ends exactly its own head: the session's head keeps every process."""
    other, state = spare_ray_head  # started beside the session's head, stopped here
    before = set(ray_head.pids())
    assert other.address != ray_head.address and other.pids()
    assert (state / "address").read_text().strip() == other.address
    assert cluster.stop(state) >= 3
    assert not other.pids() and not (state / "address").exists()
    assert before <= set(ray_head.pids())  # (workers may have been added, none removed)
