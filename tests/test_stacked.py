"""Stacked training agrees with the sequential path, config by config."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import Run

from pipeline.config import PROJECT_ROOT
from pipeline.stacked import group_by_schedule, train_stacked
from pipeline.train import EPOCH_METRICS, History, train
from tests.conftest import compose_cfg
from tests.test_sweep import run_app


def assert_same(stacked: History, sequential: History) -> None:
    assert stacked.diverged_at_step == sequential.diverged_at_step
    assert stacked.updates == sequential.updates
    assert stacked.steps == sequential.steps
    for key in EPOCH_METRICS:
        assert len(stacked.epochs[key]) == len(sequential.epochs[key])
        np.testing.assert_allclose(stacked.epochs[key], sequential.epochs[key], rtol=1e-5)
    np.testing.assert_allclose(stacked.batch_loss, sequential.batch_loss, rtol=1e-5)
    np.testing.assert_allclose(stacked.grad_norm, sequential.grad_norm, rtol=1e-5)
    if not sequential.diverged:
        np.testing.assert_allclose(stacked.w_hat, sequential.w_hat, rtol=1e-5)
        assert stacked.b_hat == pytest.approx(sequential.b_hat, rel=1e-5)
    assert stacked.ols_w_error == pytest.approx(sequential.ols_w_error, rel=1e-12)


# lr is given for the mean reduction; sum runs use lr/B, as they should. Diverging cells: the
# quadratic losses at lr 5. (Huber at a huge lr neither converges nor diverges: its capped
# gradient makes SGD bounce chaotically, so no float tolerance can hold there, between
# scratch and linear either.)
MIXED = (
    [
        (
            f"model={m}",
            f"loss={loss}",
            f"loss.reduction={red}",
            f"optim.lr={lr if red == 'mean' else lr / bs}",
            f"train.batch_size={bs}",
        )
        for m, loss, red, lr, bs in itertools.product(
            ["linear", "scratch"],
            ["squared", "mse", "huber"],
            ["mean", "sum"],
            [0.01, 0.1],
            [10, 300],
        )
    ]
    + [
        (f"model={m}", f"loss={loss}", "optim.lr=5", f"train.batch_size={bs}")
        for m, loss, bs in itertools.product(["linear", "scratch"], ["squared", "mse"], [10, 300])
    ]
    + [
        ("init=zeros",),
        ("init=xavier", "loss=huber", "loss.delta=0.1"),
        ("train.batch_size=300", "train.drop_last=true"),
        ("train.batch_size=300", "seed=1"),
    ]
)


def test_mixed_grid_matches_sequential_run_by_run() -> None:
    cfgs = [compose_cfg(*o) for o in MIXED]
    groups = group_by_schedule(cfgs)
    assert len(groups) == 4  # B=10 | B=300 | B=300 drop_last | B=300 seed 1
    diverged = 0
    for idx in groups:
        for i, hist in zip(idx, train_stacked([cfgs[i] for i in idx]), strict=True):
            seq = train(cfgs[i])
            assert_same(hist, seq)
            diverged += seq.diverged
    assert diverged == 8  # the lr-5 cells: the grid really mixes both outcomes


def test_log_every_and_many_epochs() -> None:
    cfgs = [
        compose_cfg("train.log_every=7", "train.epochs=5", f"optim.lr={lr}")
        for lr in (0.003, 0.03, 1.5)
    ]
    for hist, cfg in zip(train_stacked(cfgs), cfgs, strict=True):
        assert_same(hist, train(cfg))


def test_configs_of_different_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="one schedule"):
        train_stacked([compose_cfg(), compose_cfg("seed=1")])
    assert math.isinf(train_stacked([compose_cfg("optim.lr=5")])[0].final_mse)


# --- the launcher -----------------------------------------------------------------------------


def sweep_into(store: Path, launcher: str) -> list[Run]:
    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}",
        LINREG_OUTPUTS=str(store / "hydra"),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "-m",
            "sweep=smoke",
            "loss.reduction=mean,sum",
            f"hydra/launcher={launcher}",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("linreg")
    return client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")


def test_stacked_launcher_logs_the_same_runs_as_the_basic_one(tmp_path: Path) -> None:
    basic = {r.info.run_name: r for r in sweep_into(tmp_path / "basic", "basic")}
    stacked = {r.info.run_name: r for r in sweep_into(tmp_path / "stacked", "stacked")}
    assert len(basic) == 8 and basic.keys() == stacked.keys()
    c_basic = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'basic' / 'mlflow.db'}")
    c_stacked = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'stacked' / 'mlflow.db'}")
    differ = {"tracking.parent_run_id", "sweep.started"}
    for name, b in basic.items():
        s = stacked[name]
        assert s.info.status == b.info.status == "FINISHED"
        assert {k: v for k, v in s.data.params.items() if k not in differ} == {
            k: v for k, v in b.data.params.items() if k not in differ
        }
        assert set(s.data.tags) == set(b.data.tags)
        for tag in ("config_hash", "diverged", "model", "loss", "reduction"):
            assert s.data.tags[tag] == b.data.tags[tag]
        assert set(s.data.metrics) == set(b.data.metrics)
        for key in b.data.metrics:
            hb = sorted((m.step, m.value) for m in c_basic.get_metric_history(b.info.run_id, key))
            hs = sorted((m.step, m.value) for m in c_stacked.get_metric_history(s.info.run_id, key))
            assert [st for st, _ in hs] == [st for st, _ in hb]
            np.testing.assert_allclose([v for _, v in hs], [v for _, v in hb], rtol=1e-5)
        assert {a.path for a in c_stacked.list_artifacts(s.info.run_id)} == {
            a.path for a in c_basic.list_artifacts(b.info.run_id)
        }
    assert sum(r.data.tags["diverged"] == "true" for r in stacked.values()) == 4


def test_a_group_that_cannot_be_stacked_runs_job_by_job(
    tmp_path: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.launcher

    def broken(cfgs: object) -> None:
        raise RuntimeError("no stacking today")

    monkeypatch.setattr(pipeline.launcher, "train_stacked", broken)
    run_app(monkeypatch, tmp_path, "sweep=smoke", "hydra/launcher=stacked")
    runs = client.search_runs(
        [client.get_experiment_by_name("linreg").experiment_id], "tags.`mlflow.parentRunId` != ''"
    )
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
