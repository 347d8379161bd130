"""The team server: PostgreSQL store, served artifacts, many writers, a joblib sweep."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param

from pipeline.job import run_job
from pipeline.server import ServerInfo
from pipeline.views import EXPERIMENT_KIND_TAG, TRAINING_KIND
from tests.conftest import compose_cfg
from tests.integration.conftest import run_pipeline

pytestmark = pytest.mark.integration

WRITERS, RUNS_EACH, STEPS = 8, 30, 5


def test_server_runs_on_postgres_and_serves_artifacts(
    mlflow_server: ServerInfo, on_server: str, server_root: Path
) -> None:
    cmdline = Path(f"/proc/{mlflow_server.mlflow_pid}/cmdline").read_bytes().split(b"\0")
    store = cmdline[cmdline.index(b"--backend-store-uri") + 1].decode()
    assert store.startswith("postgresql+psycopg2://mlflow@127.0.0.1:")
    assert b"--serve-artifacts" in cmdline

    run_job(compose_cfg("tracking.experiment=server-job", "train.epochs=1"))  # in-process: fast
    client = mlflow.MlflowClient(on_server)
    exp = client.get_experiment_by_name("server-job")
    assert exp is not None and exp.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["lr"] == 0.03
    # artifacts went through the server into its artifacts directory
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {f.path for f in client.list_artifacts(run.info.run_id)} >= {"config.yaml"}
    assert list((server_root / "artifacts").rglob(f"{run.info.run_id}/**/config.yaml"))


def log_runs(uri: str, experiment_id: str, writer: int) -> list[str]:
    """One writer process: RUNS_EACH runs, each with a metric history, params and a tag."""
    client = mlflow.MlflowClient(uri)
    ids = []
    for i in range(RUNS_EACH):
        run = client.create_run(experiment_id, run_name=f"w{writer}-r{i}")
        now = int(time.time() * 1000)
        metrics = [Metric("loss", float(writer * 1000 + i * 10 + s), now, s) for s in range(STEPS)]
        metrics.append(Metric("final", float(writer * 1000 + i), now, 0))
        params = [Param("writer", str(writer)), Param("index", str(i))]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return ids


def test_many_writers_through_the_server(on_server: str) -> None:
    client = mlflow.MlflowClient(on_server)
    exp_id = client.create_experiment("load")
    t0 = time.time()
    # fork: the writers start with MLflow already imported (spawn re-imports it 8 times)
    with ProcessPoolExecutor(WRITERS, mp_context=get_context("fork")) as pool:
        futures = [pool.submit(log_runs, on_server, exp_id, w) for w in range(WRITERS)]
        ids = [rid for f in futures for rid in f.result()]  # re-raises any writer's error
    print(f"{len(ids)} runs from {WRITERS} processes in {time.time() - t0:.1f}s")
    runs = client.search_runs([exp_id], max_results=1000)
    assert len(ids) == len(set(ids)) == len(runs) == WRITERS * RUNS_EACH
    keys = {(r.data.params["writer"], r.data.params["index"]) for r in runs}
    assert len(keys) == WRITERS * RUNS_EACH  # no run duplicated, none lost
    for r in runs:
        w, i = int(r.data.params["writer"]), int(r.data.params["index"])
        assert r.info.status == "FINISHED"
        assert r.data.metrics == {"loss": w * 1000 + i * 10 + STEPS - 1.0, "final": w * 1000 + i}
    # whole histories, on a sample (one request per run)
    for r in runs[:: len(runs) // 12]:
        history = client.get_metric_history(r.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(STEPS))


def test_joblib_sweep_over_the_server(on_server: str) -> None:
    done = run_pipeline("-m", "sweep=smoke", "hydra/launcher=joblib")
    assert done.returncode == 0, done.stderr[-2000:]
    client = mlflow.MlflowClient(on_server)
    exp = client.get_experiment_by_name("linreg")
    assert exp is not None
    (parent,) = client.search_runs([exp.experiment_id], "tags.sweep_parent = 'true'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_finished"] == 2
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["diverged"] for c in children) == ["false", "false", "true", "true"]
    # the sweep saved the UI view its children open in
    assert any(k.endswith(parent.info.run_id) for k in exp.tags)


def test_sqlite_store_imports_into_the_server(on_server: str, tracking_uri: str) -> None:
    from pipeline.server_import import IMPORTED_FROM, copy_store

    # a parent and a child in a SQLite store, as a sweep leaves them
    src = mlflow.MlflowClient(tracking_uri)
    cfg = compose_cfg("tracking.experiment=imported", f"tracking.uri={tracking_uri}")
    run_job(cfg)
    (child,) = src.search_runs([src.get_experiment_by_name("imported").experiment_id])
    parent = src.create_run(
        child.info.experiment_id, run_name="sweep-x", tags={"sweep_parent": "true"}
    )
    src.set_tag(child.info.run_id, "mlflow.parentRunId", parent.info.run_id)
    src.set_terminated(parent.info.run_id)

    assert copy_store(tracking_uri, on_server) == (2, 0)
    assert copy_store(tracking_uri, on_server)[0] == 0  # again: nothing copied twice
    dst = mlflow.MlflowClient(on_server)
    exp = dst.get_experiment_by_name("imported")
    assert exp is not None and exp.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    runs = {r.data.tags[IMPORTED_FROM]: r for r in dst.search_runs([exp.experiment_id])}
    assert set(runs) == {child.info.run_id, parent.info.run_id}
    copy = runs[child.info.run_id]
    assert copy.data.tags["mlflow.parentRunId"] == runs[parent.info.run_id].info.run_id
    assert copy.data.params == src.get_run(child.info.run_id).data.params
    assert copy.data.metrics == child.data.metrics
    assert (copy.info.status, copy.info.start_time) == (child.info.status, child.info.start_time)

    def history(client: mlflow.MlflowClient, rid: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(rid, key))

    for key in ("batch_loss", "mse"):  # whole histories
        assert history(dst, copy.info.run_id, key) == history(src, child.info.run_id, key)
    assert {f.path for f in dst.list_artifacts(copy.info.run_id)} >= {
        "config.yaml",
        "overrides.yaml",
    }
