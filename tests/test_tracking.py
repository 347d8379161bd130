"""The MLflow run of a job holds exactly the contract, read back with MlflowClient."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow.entities import Run

from pipeline.identity import config_hash, flatten, to_container
from pipeline.job import run_job
from pipeline.tracking import MACHINE_METRICS, git_state
from pipeline.views import CONFIG_METRICS
from tests.conftest import compose_cfg

EPOCH = {"train_loss", "mse", "w_error", "b_error", "val_mse", "gap"}
STEP = {"batch_loss", "grad_norm", "grad_norm_w", "grad_norm_b"}
FINAL = {
    *("ols_w_error", "ols_b_error", "ols_mse", "ols_val_mse"),
    *("w_hat_0", "w_hat_1", "b_hat", "updates", "data_mb"),
    *MACHINE_METRICS,
}
# config values also logged as metrics, so the UI sorts and filters them as numbers
CONFIG = set(CONFIG_METRICS)


def only_run(client: mlflow.MlflowClient) -> Run:
    exp = client.get_experiment_by_name("linreg")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_default_run_holds_the_contract(client: mlflow.MlflowClient, tmp_path: Path) -> None:
    cfg = compose_cfg("train.log_every=2")
    result = run_job(cfg, overrides=["train.log_every=2"])
    run = only_run(client)
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "linear-mse-lr0.03-bs10-log_every2-s0"
    # params: every leaf of the resolved config, with dots, and the short choice names
    leaves = {k: str(v) for k, v in flatten(to_container(cfg)).items()}
    short = {
        "model": "linear",
        "loss": "mse",
        "reduction": "mean",
        "init": "normal",
        "optim": "sgd",
    }
    assert run.data.params == leaves | short
    for key in (
        "optim.lr",
        "train.batch_size",
        "model.name",
        "loss.name",
        "loss.reduction",
        "seed",
        "data.n",
    ):
        assert key in run.data.params
    assert run.data.params["model.name"] == "linear" and run.data.params["optim.lr"] == "0.03"
    # metrics
    assert set(run.data.metrics) == EPOCH | STEP | FINAL | CONFIG
    assert run.data.metrics["lr"] == 0.03 and run.data.metrics["batch_size"] == 10.0
    for key in EPOCH:
        assert [s for s, _ in history(client, rid, key)] == [0, 1, 2, 3]
    for key in STEP:
        assert [s for s, _ in history(client, rid, key)] == list(range(2, 301, 2))
    assert history(client, rid, "mse")[-1][1] == result
    assert result < 2e-4 and run.data.metrics["w_error"] < 5e-3
    assert run.data.metrics["ols_w_error"] < 5e-3
    w_hat = (run.data.metrics["w_hat_0"], run.data.metrics["w_hat_1"])
    assert math.hypot(w_hat[0] - 2.0, w_hat[1] + 3.4) == pytest.approx(
        run.data.metrics["w_error"], rel=1e-9
    )
    # tags
    tags = run.data.tags
    assert tags["model"] == "linear" and tags["loss"] == "mse" and tags["diverged"] == "false"
    assert tags["engine"] == "linear" and run.data.params["train.engine"] == "d2l"
    assert tags["config_hash"] == config_hash(cfg) and len(tags["config_hash"]) == 16
    assert "torch_version" in tags and "python_version" in tags
    assert "mlflow.parentRunId" not in tags
    # artifacts: resolved config (round-trips to the same params) and the overrides
    files = {a.path for a in client.list_artifacts(rid)}
    assert files == {"config.yaml", "overrides.yaml"} | (
        {"git.diff"} if git_state().dirty else set()
    )
    path = client.download_artifacts(rid, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(path).read_text()) == to_container(cfg)
    path = client.download_artifacts(rid, "overrides.yaml", str(tmp_path))
    assert yaml.safe_load(Path(path).read_text()) == ["train.log_every=2"]


def test_config_hash_ignores_tracking_keys_only() -> None:
    base = config_hash(compose_cfg())
    assert config_hash(compose_cfg("tracking.experiment=other", "sweep.force=true")) == base
    assert config_hash(compose_cfg("optim.lr=0.031")) != base
    assert config_hash(compose_cfg("model=scratch")) != base


def test_run_names_are_distinct_across_keys() -> None:
    from pipeline.identity import run_name

    names = {
        run_name(compose_cfg(*o))
        for o in [
            (),
            ("model=scratch",),
            ("loss=huber",),
            ("loss.reduction=sum",),
            ("optim.lr=0.1",),
            ("train.batch_size=100",),
            ("seed=1",),
            ("init=zeros",),
            ("data.n=50",),
            ("data=outliers",),
            ("train.drop_last=true",),
        ]
    }
    assert len(names) == 11
    assert run_name(compose_cfg("model=scratch", "loss=squared", "init=zeros")) == (
        "scratch-squared-lr0.03-bs10-zeros-s0"
    )


def test_divergence_is_tagged_and_logs_no_inf(client: mlflow.MlflowClient) -> None:
    assert run_job(compose_cfg("optim.lr=5", "train.log_every=1")) == math.inf
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.data.tags["diverged"] == "true"
    at = run.data.metrics["diverged_at_step"]
    assert 1 <= at < 300
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            assert math.isfinite(m.value) and abs(m.value) < 1e300
    assert max(s for s, _ in history(client, run.info.run_id, "batch_loss")) == at - 1


def test_an_exception_ends_the_run_failed(
    client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom in training")

    monkeypatch.setattr("pipeline.job.train", boom)
    with pytest.raises(RuntimeError):
        run_job(compose_cfg())
    run = only_run(client)
    assert run.info.status == "FAILED" and "boom in training" in run.data.tags["error"]


def test_ctrl_c_ends_the_run_killed(
    client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.job.train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job(compose_cfg())
    assert only_run(client).info.status == "KILLED"


def test_sigterm_ends_the_run_killed(
    client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM to the job's process while it trains (here: this process; a real sweep's
    process is signalled in tests/test_reliability.py): its run closes KILLED."""
    import pipeline.job
    from pipeline.procs import Interrupted

    real_train = pipeline.job.train
    sent = []

    def train_then_sigterm(*args: Any, **kwargs: Any) -> Any:
        sent.append(os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pipeline.job, "train", train_then_sigterm)
    with pytest.raises(Interrupted):
        run_job(compose_cfg("model=scratch"))
    assert sent and only_run(client).info.status == "KILLED"
    assert only_run(client).data.tags["error"] == "interrupted"


def test_cli_runs_the_default_job(
    client: mlflow.MlflowClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command line's entry point, in this process (test_sweep runs the real one)."""
    from tests.test_reliability import run_cli

    assert run_cli(monkeypatch, "model=scratch", "loss=squared", f"hydra.run.dir={tmp_path}/h") == 0
    stdout = capsys.readouterr().out
    run = only_run(client)
    assert f"mlflow run {run.info.run_id}" in stdout
    lines = [ln for ln in stdout.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 4
    assert run.data.metrics["train_loss"] < 1e-4
    assert f"loss {run.data.metrics['train_loss']:f}" in lines[-1]
