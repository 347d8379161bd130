"""Reproducible reruns: determinism across processes, and the rerun command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir

from pipeline import rerun as rerun_module
from pipeline.config import PROJECT_ROOT
from pipeline.job import run_job
from pipeline.tracking import VERSION_TAGS, git_state
from pipeline.ui import latest_sweep_urls
from pipeline.views import runs_view_url
from tests.conftest import compose_cfg
from tests.test_sweep import run_app

TRAIN_AND_SAVE = """
import sys, torch
from hydra import compose, initialize_config_dir
from pipeline.config import PROJECT_ROOT, register_configs
from pipeline.train import train_one
register_configs()
out = {}
for name, overrides in [("default", []), ("scratch-huber", ["model=scratch", "loss=huber",
                        "train.batch_size=7"]), ("stacked", ["train.engine=stacked", "seed=4"])]:
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    h = train_one(cfg)
    out[name] = {"w": torch.tensor(h.w_hat, dtype=torch.float64), "b": torch.tensor(h.b_hat),
                 "epochs": h.epochs, "batch_loss": h.batch_loss, "grad_norm": h.grad_norm}
torch.save(out, sys.argv[1])
"""


def test_same_config_in_two_processes_is_bit_identical(tmp_path: Path) -> None:
    # a fresh interpreter and this one (which has trained and composed much else before)
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN_AND_SAVE, str(tmp_path / "0.pt")], cwd=PROJECT_ROOT
    )
    argv, sys.argv = sys.argv, ["-c", str(tmp_path / "1.pt")]
    try:  # the same script, in this process, while the other one runs
        exec(compile(TRAIN_AND_SAVE, "train_and_save", "exec"), {})
    finally:
        sys.argv = argv
    assert proc.wait(timeout=300) == 0
    outs = [torch.load(tmp_path / f"{i}.pt") for i in range(2)]
    first, second = outs
    assert first.keys() == second.keys() == {"default", "scratch-huber", "stacked"}
    for name, a in first.items():
        b = second[name]
        assert torch.equal(a["w"], b["w"]) and torch.equal(a["b"], b["b"])
        assert a["epochs"] == b["epochs"] and a["batch_loss"] == b["batch_loss"]
        assert a["grad_norm"] == b["grad_norm"]


def only(client: mlflow.MlflowClient, filter_string: str = "") -> list[mlflow.entities.Run]:
    exp = client.get_experiment_by_name("linreg")
    return client.search_runs([exp.experiment_id], filter_string) if exp else []


def test_a_run_records_what_reproduces_it(client: mlflow.MlflowClient) -> None:
    run_job(compose_cfg("seed=3"), overrides=["seed=3"])
    run = only(client)[0]
    tags = run.data.tags
    assert set(VERSION_TAGS) <= set(tags)
    # a checkout without .git (an sdist, a copied tree) records "unknown"
    assert tags["git_commit"] == git_state().commit
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    assert tags["git_dirty"] == str(git_state().dirty).lower()
    assert tags["deterministic"] == "true" and int(tags["torch_num_threads"]) >= 1
    assert run.data.params["seed"] == "3"
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "overrides.yaml"} <= files
    assert ("git.diff" in files) == git_state().dirty


def test_rerun_reproduces_a_run(
    client: mlflow.MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    run_job(compose_cfg("model=scratch", "train.batch_size=30", "seed=2"))
    original = only(client)[0]
    assert rerun_module.main([original.info.run_id]) == 0
    assert "identical" in capsys.readouterr().out
    new = only(client, f"tags.rerun_of = '{original.info.run_id}'")
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    assert new[0].data.params == original.data.params | {
        "tracking.run_name": f"rerun-{original.info.run_name}"
    }
    assert new[0].data.tags["config_hash"] == original.data.tags["config_hash"]


def test_rerun_uses_the_logged_config_not_todays_conf(
    tmp_path: Path, client: mlflow.MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    # the original is made with a conf/ whose default lr differs from today's
    old_conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", old_conf)
    sgd = old_conf / "optim" / "sgd.yaml"
    sgd.write_text(sgd.read_text().replace("lr: 0.03 ", "lr: 0.05 "))
    with initialize_config_dir(config_dir=str(old_conf), version_base="1.3"):
        run_job(compose("config"))
    original = only(client)[0]
    assert original.data.params["optim.lr"] == "0.05"
    assert compose_cfg().optim.lr == 0.03  # today's conf says otherwise
    assert rerun_module.main([original.info.run_id]) == 0
    assert "identical" in capsys.readouterr().out
    new = only(client, f"tags.rerun_of = '{original.info.run_id}'")[0]
    assert new.data.params["optim.lr"] == "0.05"


def test_rerun_reports_a_mismatch(
    client: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_job(compose_cfg())
    original = only(client)[0]
    import pipeline.job

    real = pipeline.job.train

    def drifted(cfgs: Any, **kwargs: Any) -> Any:
        hists = real(cfgs, **kwargs)
        hists[0].epochs["mse"][-1] *= 1.001
        return hists

    monkeypatch.setattr(pipeline.job, "train", drifted)
    assert rerun_module.main([original.info.run_id]) == 1
    out = capsys.readouterr().out
    assert "identical" not in out and "mse" in out


def test_rerun_refuses_what_it_cannot_rebuild(
    client: mlflow.MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = client.create_experiment("linreg")
    foreign = client.create_run(exp).info.run_id  # made by another tool
    no_config = client.create_run(exp, tags={"config_hash": "abc"}).info.run_id
    before = len(only(client))
    for run_id, message in [
        ("0" * 32, "no run"),
        (foreign, "not made by this pipeline"),
        (no_config, "no config.yaml"),
    ]:
        assert rerun_module.main([run_id]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert len(only(client)) == before


def test_default_launcher_sweep_then_rerun_is_all_identical(
    tmp_path: Path,
    client: mlflow.MlflowClient,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `make sweep` trains with the stacked launcher; its runs rerun bit-identically (each one
    # inside its stacked group), and the d2l cells with their own code
    run_app(monkeypatch, tmp_path, "sweep=smoke", "hydra/launcher=stacked", "seed=0,1")
    parent = only(client, "tags.sweep_parent = 'true'")[0]
    children = only(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    engines = {r.data.tags["engine"] for r in children}
    assert engines == {"stacked"}
    exp_id, run_id = parent.info.experiment_id, parent.info.run_id
    assert latest_sweep_urls(client.tracking_uri, "http://h") == (
        runs_view_url("http://h", exp_id, run_id),
        runs_view_url("http://h", exp_id, run_id, grouped=True),
    )
    capsys.readouterr()
    assert rerun_module.main(["--sweep", "latest"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len([ln for ln in lines if ln.endswith(": identical")]) == 8
    assert lines[-1] == "8/8 runs identical"
    assert len(only(client, "tags.rerun_of != ''")) == 8
