"""The stacked engine agrees with the d2l codes config by config, and the stacked launcher
logs what it trained (engine tag, run name) with the contract of a sequential job."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.entities import Run
from omegaconf import DictConfig, OmegaConf

from pipeline.config import ConfigError
from pipeline.steps import SCRATCH_PROBES
from pipeline.tracking import MACHINE_METRICS
from pipeline.train import (
    EPOCH_METRICS,
    VAL_METRICS,
    History,
    group_by_schedule,
    resolve_engine,
    train,
    train_one,
)
from tests.conftest import compose_cfg
from tests.test_sweep import run_app


def assert_same(stacked: History, sequential: History) -> None:
    assert stacked.diverged_at_step == sequential.diverged_at_step
    assert stacked.updates == sequential.updates
    assert stacked.steps == sequential.steps
    assert stacked.epochs.keys() == sequential.epochs.keys()
    assert set(EPOCH_METRICS) | set(VAL_METRICS) <= sequential.epochs.keys()  # n_val > 0
    for key in sequential.epochs:
        assert len(stacked.epochs[key]) == len(sequential.epochs[key])
        np.testing.assert_allclose(stacked.epochs[key], sequential.epochs[key], rtol=1e-5)
    np.testing.assert_allclose(stacked.batch_loss, sequential.batch_loss, rtol=1e-5)
    for key in ("grad_norm", "grad_norm_w", "grad_norm_b"):
        np.testing.assert_allclose(getattr(stacked, key), getattr(sequential, key), rtol=1e-5)
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
            [0.1],
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
        ("optim.lr_scaling=sqrt", "train.batch_size=300"),
        ("optim.weight_decay=0.5", "loss=squared", "loss.reduction=sum", "optim.lr=0.0003"),
        ("optim.weight_decay=0.2", "train.batch_size=300"),
    ]
)


def test_mixed_grid_matches_the_d2l_codes_run_by_run() -> None:
    # 2 epochs: the engines part ways (or not) in the first updates, and it halves the cost
    cfgs = [compose_cfg("train.engine=stacked", "train.epochs=2", *o) for o in MIXED]
    groups = group_by_schedule(cfgs)
    assert len(groups) == 4  # B=10 | B=300 | B=300 drop_last | B=300 seed 1
    diverged = 0
    for idx in groups:
        for i, hist in zip(idx, train([cfgs[i] for i in idx]), strict=True):
            seq = train_one(compose_cfg("train.epochs=2", *MIXED[i]))  # the model's own code
            assert_same(hist, seq)
            diverged += seq.diverged
    assert diverged == 8  # the lr-5 cells: the grid really mixes both outcomes


# L1 and SmoothL1 in every engine, alone and in one stacked group with the other losses (the
# L1 columns take sign(r), the others their clamp): sum runs use lr/B, the partial batch and
# the outliers included
ROBUST = [
    ("loss=l1",),
    ("loss=l1", "loss.reduction=sum", "optim.lr=0.003"),
    ("loss=l1", "data=outliers"),
    ("loss=smooth_l1", "loss.delta=0.5"),
    ("loss=smooth_l1", "loss.delta=0.05", "data=outliers"),
    ("loss=smooth_l1", "loss.reduction=sum", "optim.lr=0.003"),
    ("loss=huber", "loss.delta=0.5"),
    ("loss=mse",),
]


def assert_close(a: History, b: History, rtol: float) -> None:
    for key in EPOCH_METRICS:
        np.testing.assert_allclose(a.epochs[key], b.epochs[key], rtol=rtol)
    np.testing.assert_allclose(a.batch_loss, b.batch_loss, rtol=rtol)
    np.testing.assert_allclose(a.grad_norm, b.grad_norm, rtol=rtol)
    np.testing.assert_allclose(a.w_hat, b.w_hat, rtol=rtol)


@pytest.mark.parametrize("batch", ["train.batch_size=10", "train.batch_size=300"])
def test_l1_and_smooth_l1_agree_in_every_engine(batch: str) -> None:
    composed = [compose_cfg("train.epochs=1", batch, *o) for o in ROBUST]

    def variant(i: int, key: str, value: str) -> DictConfig:
        cfg = copy.deepcopy(composed[i])
        OmegaConf.update(cfg, key, value)
        return cfg

    cfgs = [variant(i, "train.engine", "stacked") for i in range(len(ROBUST))]
    groups = group_by_schedule(cfgs)
    assert len(groups) == 2  # clean | outliers
    for idx in groups:
        for i, hist in zip(idx, train([cfgs[i] for i in idx]), strict=True):
            scratch = train_one(variant(i, "model.name", "scratch"))
            linear = train_one(variant(i, "model.name", "linear"))
            assert_close(scratch, linear, 1e-9)
            assert_close(hist, linear, 1e-9)


def test_smooth_l1_is_huber_over_beta() -> None:
    # SmoothL1(β) = Huber(δ = β)/β: at lr η it makes Huber's steps at lr η/β, and prints
    # Huber's loss over β
    beta = 0.25
    common = ("train.engine=stacked", "data=outliers", f"loss.delta={beta}")
    smooth, huber = train(
        [
            compose_cfg(*common, "loss=smooth_l1", "optim.lr=0.03"),
            compose_cfg(*common, "loss=huber", f"optim.lr={0.03 / beta}"),
        ]
    )
    np.testing.assert_allclose(smooth.w_hat, huber.w_hat, rtol=1e-9)
    np.testing.assert_allclose(smooth.epochs["w_error"], huber.epochs["w_error"], rtol=1e-9)
    np.testing.assert_allclose(
        smooth.epochs["train_loss"], np.array(huber.epochs["train_loss"]) / beta, rtol=1e-9
    )


def test_l1_gradient_at_a_zero_residual_is_zero_in_every_form() -> None:
    # PyTorch's L1Loss has gradient sign(0) = 0 there; the hand-written loss and the closed
    # form match it (r = 0 exactly, and residuals of both signs)
    import torch

    from pipeline.losses import ClampForm, nn_loss, per_sample

    cfg = compose_cfg("loss=l1", "loss.reduction=sum")
    y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for loss in (per_sample(cfg), nn_loss(cfg)):
        y_hat = torch.tensor([1.0, 2.5, 2.0], dtype=torch.float64, requires_grad=True)
        loss(y_hat, y).sum().backward()
        assert y_hat.grad is not None and y_hat.grad.tolist() == [0.0, 1.0, -1.0]
    form = ClampForm([cfg, compose_cfg("loss=huber")], torch.float64)
    r = torch.tensor([[0.0, 0.0], [0.5, 0.5], [-2.0, -2.0]], dtype=torch.float64)
    assert form.clamp(r)[:, 0].tolist() == [0.0, 1.0, -1.0]  # L1: sign(r)
    assert form.clamp(r)[:, 1].tolist() == [0.0, 0.5, -1.0]  # Huber δ = 1: clamp
    assert form.value(r).tolist() == pytest.approx([2.5, (0.125 + 1.5) / 3])  # sum, mean


def test_log_every_and_many_epochs() -> None:
    overrides = [("train.log_every=7", "train.epochs=5", f"optim.lr={lr}") for lr in (0.003, 1.5)]
    stacked = train([compose_cfg("train.engine=stacked", *o) for o in overrides])
    for hist, o in zip(stacked, overrides, strict=True):
        assert_same(hist, train_one(compose_cfg(*o)))


def test_one_schedule_per_call_and_the_engine_is_explicit() -> None:
    with pytest.raises(ValueError, match="one engine and schedule"):
        train([compose_cfg("train.engine=stacked"), compose_cfg("train.engine=stacked", "seed=1")])
    with pytest.raises(ValueError, match="one config at a time"):
        train([compose_cfg("train.engine=d2l"), compose_cfg("train.engine=d2l", "optim.lr=0.1")])
    assert math.isinf(train([compose_cfg("train.engine=stacked", "optim.lr=5")])[0].final_mse)
    auto = compose_cfg()
    resolve_engine(auto, stacking=True)
    assert auto.train.engine.value == "stacked"
    single = compose_cfg()
    resolve_engine(single, stacking=False)
    assert single.train.engine.value == "d2l"


def test_a_loss_without_closed_form_is_refused_or_trained_by_its_d2l_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipeline.engines

    monkeypatch.setattr(pipeline.engines, "STACKABLE", frozenset())  # as a future loss would be
    auto = compose_cfg("loss=huber")
    resolve_engine(auto, stacking=True)
    assert auto.train.engine.value == "d2l"  # trained by the right step, and tagged so
    with pytest.raises(ConfigError, match="train.engine=stacked: loss huber"):
        resolve_engine(compose_cfg("loss=huber", "train.engine=stacked"), stacking=True)


# --- the launcher -----------------------------------------------------------------------------


def sweep_into(
    monkeypatch: pytest.MonkeyPatch, store: Path, launcher: str, *args: str
) -> tuple[mlflow.MlflowClient, list[Run]]:
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_app(monkeypatch, store, "sweep=smoke", f"hydra/launcher={launcher}", *args)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("linreg")
    return client, client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")


def test_stacked_launcher_logs_the_same_runs_as_the_basic_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = "loss.reduction=mean,sum"
    c_basic, basic_runs = sweep_into(monkeypatch, tmp_path / "basic", "basic", both)
    c_stacked, stacked_runs = sweep_into(monkeypatch, tmp_path / "stacked", "stacked", both)
    basic = {r.info.run_name: r for r in basic_runs}
    # the run name says which engine trained it
    stacked = {r.info.run_name.replace("-stacked-", "-"): r for r in stacked_runs}
    assert all("-stacked-" in r.info.run_name for r in stacked_runs)
    assert len(basic) == 8 and basic.keys() == stacked.keys()
    for name, b in basic.items():
        s = stacked[name]
        assert s.info.status == b.info.status == "FINISHED"
        assert b.data.tags["engine"] == b.data.params["model.name"]  # scratch / linear code
        assert s.data.tags["engine"] == "stacked" and s.data.params["train.engine"] == "stacked"
        same = {k: v for k, v in s.data.params.items() if k != "train.engine"}
        assert same == {k: v for k, v in b.data.params.items() if k != "train.engine"}
        assert s.data.tags["config_hash"] != b.data.tags["config_hash"]  # engine is identity
        assert set(s.data.tags) == set(b.data.tags) | {"stack_size", "stack_id"}
        for tag in ("diverged", "model", "loss", "reduction"):
            assert s.data.tags[tag] == b.data.tags[tag]
        # the scratch code also logs its autograd graph's size and backward time
        assert set(s.data.metrics) == set(b.data.metrics) - set(SCRATCH_PROBES)
        for key in set(s.data.metrics) - MACHINE_METRICS:
            hb = sorted((m.step, m.value) for m in c_basic.get_metric_history(b.info.run_id, key))
            hs = sorted((m.step, m.value) for m in c_stacked.get_metric_history(s.info.run_id, key))
            assert [st for st, _ in hs] == [st for st, _ in hb]
            np.testing.assert_allclose([v for _, v in hs], [v for _, v in hb], rtol=1e-5)
        assert {a.path for a in c_stacked.list_artifacts(s.info.run_id)} == {
            a.path for a in c_basic.list_artifacts(b.info.run_id)
        }
    assert sum(r.data.tags["diverged"] == "true" for r in stacked.values()) == 4


def children(client: mlflow.MlflowClient) -> list[Run]:
    exp = client.get_experiment_by_name("linreg")
    return client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")


def test_d2l_cells_of_a_stacked_sweep_are_trained_by_their_own_code(
    tmp_path: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_app(monkeypatch, tmp_path, "sweep=smoke", "hydra/launcher=stacked", "train.engine=d2l")
    runs = children(client)
    assert sorted(r.data.tags["engine"] for r in runs) == ["linear"] * 2 + ["scratch"] * 2
    assert all("stack_size" not in r.data.tags or r.data.tags["stack_size"] == "1" for r in runs)


def test_a_failed_stacked_group_fails_its_jobs_never_silently_retrains(
    tmp_path: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.job

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no stacking today")

    monkeypatch.setattr(pipeline.job, "train", broken)
    with pytest.raises(SystemExit) as exc:
        run_app(monkeypatch, tmp_path, "sweep=smoke", "hydra/launcher=stacked")
    assert exc.value.code == 1
    runs = children(client)
    assert len(runs) == 4 and all(r.info.status == "FAILED" for r in runs)
    assert all("no stacking today" in r.data.tags["error"] for r in runs)
