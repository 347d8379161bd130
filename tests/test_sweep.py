"""Sweeps: presets, parent/child runs, caching and resume, failures, parallel workers."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import Run
from omegaconf import OmegaConf

from pipeline.config import PROJECT_ROOT, effective_lr, planned_epochs
from pipeline.job import run_job
from pipeline.sweep import SweepCallback, expand
from pipeline.train import train_one
from tests.conftest import compose_cfg, job_composer

CONTRACT = {
    "train_loss",
    "mse",
    "w_error",
    "b_error",
    "batch_loss",
    "grad_norm",
    "grad_norm_w",
    "grad_norm_b",
    "ols_w_error",
    "ols_b_error",
    "w_hat_0",
    "w_hat_1",
    "b_hat",
    "updates",
    "lr",  # config values as metrics: numbers the UI sorts and filters
    "batch_size",
    "seed",
}
CELLS = {  # grid cells x 5 seeds
    "lr": 36 * 5,
    "batch_size": 16 * 5,
    "reduction": 12 * 5,
    "loss": 15 * 5,
    "init": 4 * 5,
    "data_size": 15 * 5,
    "partial_batch": 6 * 5,
    "no_grad": 5 * 5,
    "torch_losses": 8 * 5,
    "book": 2 * 5,
    "optimizers": 45 * 5,
    "fitting": 11 * 5,
    "streaming": 6 * 5,
    "smoke": 4,
}


@functools.cache
def _preset_jobs(preset: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    composer = job_composer()
    # the grids are in the hydra node: the composition with it, as the sweeper sees it
    full = composer.loader.load_sweep_config(composer.master_config, [f"sweep={preset}"])
    assert full.sweep.name == preset
    grids = OmegaConf.to_container(full.hydra.sweeper.grids, resolve=False)
    assert isinstance(grids, dict)
    jobs = expand(grids, [], seeds=full.hydra.sweeper.get("seeds"))  # type: ignore[arg-type]
    return tuple((grid, tuple(overrides)) for grid, overrides in jobs)


def preset_jobs(preset: str) -> list[tuple[str, list[str]]]:
    """A preset's jobs as (grid name, overrides), expanded by the grids sweeper's own code."""
    return [(grid, list(overrides)) for grid, overrides in _preset_jobs(preset)]


@pytest.mark.parametrize("preset", sorted(CELLS))
def test_each_preset_yields_its_jobs(preset: str) -> None:
    jobs = preset_jobs(preset)
    assert len(jobs) == CELLS[preset]
    for _, overrides in jobs[:3] + jobs[-3:]:  # they compose as jobs
        assert compose_cfg(*overrides, f"sweep={preset}").sweep.name == preset


def test_faq_is_the_union_of_all_presets() -> None:
    faq = preset_jobs("faq")
    assert len(faq) == sum(n for p, n in CELLS.items() if p != "smoke")
    assert 300 <= len({tuple(o) for _, o in faq}) <= 1000  # every question, 5 seeds a cell
    # every cell of every question runs 5 seeds
    seeds = [next(o for o in overrides if o.startswith("seed=")) for _, overrides in faq]
    assert {s: seeds.count(s) for s in set(seeds)} == {f"seed={i}": len(faq) // 5 for i in range(5)}


def test_lr_preset_crosses_the_divergence_point() -> None:
    lrs = {
        float(o.split("=")[1])
        for grid, os in preset_jobs("lr")
        for o in os
        if "optim.lr" in o and grid == "lr"
    }
    assert min(lrs) == 0.001 and max(lrs) == 3
    assert train_diverges("optim.lr=3") and not train_diverges("optim.lr=0.001")


def train_diverges(*overrides: str) -> bool:
    from pipeline.train import train_one

    return train_one(compose_cfg(*overrides)).diverged


def seed0(preset: str) -> list[tuple[str, list[str]]]:
    """A preset's cells for one seed (the knobs do not depend on it)."""
    return [(g, o) for g, o in preset_jobs(preset) if "seed=0" in o]


def test_named_knobs_derive_lr_and_epochs_in_each_job() -> None:
    sums = [os for g, os in seed0("reduction") if g == "reduction_sum_scaled"]
    for overrides in sums:
        cfg = compose_cfg(*overrides)
        assert cfg.optim.lr == 0.03  # the param says what the user chose ...
        assert effective_lr(cfg) == pytest.approx(0.03 / cfg.train.batch_size)  # ... and this
    scaled = {
        (c.optim.lr_scaling.value, c.train.batch_size): effective_lr(c)
        for c in (compose_cfg(*o) for _, o in seed0("batch_size"))
    }
    assert scaled["linear", 1000] == pytest.approx(3.0) and scaled["none", 1000] == 0.03
    assert scaled["sqrt", 1] == pytest.approx(0.03 / math.sqrt(10))
    for _, overrides in seed0("data_size"):
        cfg = compose_cfg(*overrides)
        per_epoch = math.ceil(cfg.data.n / cfg.train.batch_size)
        # the fewest epochs that make the preset's update budget: equal updates at every n
        assert planned_epochs(cfg) == math.ceil(cfg.train.min_updates / per_epoch) > 0
    h = train_one(compose_cfg("data.n=20", "train.min_updates=30"))  # 2 per epoch -> 15 epochs
    assert h.updates == 30 and len(h.epochs["mse"]) == 16


# --- running sweeps ---------------------------------------------------------------------------


def all_runs(client: mlflow.MlflowClient) -> list[Run]:
    exp = client.get_experiment_by_name("linreg")
    return client.search_runs([exp.experiment_id]) if exp else []


def split(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    parents = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


# One interpreter runs the app's light paths as a command line would, and reports for each its
# exit code, stderr, and whether torch or MLflow got imported (they take seconds to load).
LIGHT_PATHS = """
import contextlib, io, json, os, sys
from hydra.core.global_hydra import GlobalHydra
from pipeline.__main__ import cli, collect_less_often, exit_quickly
collect_less_often()  # the settings `python -m pipeline` runs with
out = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["pipeline", *args]
    os.environ.pop("HYDRA_FULL_ERROR", None)  # cli() sets it for Hydra: as in a fresh process
    GlobalHydra.instance().clear()
    err, code = io.StringIO(), 0
    with contextlib.redirect_stdout(io.StringIO()) as std, contextlib.redirect_stderr(err):
        try:
            cli()
        except SystemExit as exc:
            code = exc.code
    loaded = ["torch" in sys.modules, "mlflow" in sys.modules]
    out.append([code, std.getvalue(), err.getvalue(), *loaded])
print(json.dumps(out))
exit_quickly()
"""


def test_smoke_sweep_then_identical_rerun_and_light_paths(
    tmp_path: Path,
    client: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_app(monkeypatch, tmp_path, "sweep=smoke")
    first, progress = capsys.readouterr()
    parents, children = split(all_runs(client))
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("sweep-smoke-")
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    for child in children:
        assert child.info.status == "FINISHED"
        diverged = child.data.tags["diverged"] == "true"
        assert diverged == (child.data.params["optim.lr"] == "5.0")
        missing = CONTRACT - set(child.data.metrics)
        assert missing <= ({"train_loss", "mse", "w_error", "b_error"} if diverged else set())
    m = parent.data.metrics
    assert (m["n_finished"], m["n_diverged"], m["n_failed"], m["n_cached"]) == (2, 2, 0, 0)
    assert parent.data.params["preset"] == "smoke"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "jobs.json",
        "summary.csv",
    }
    # the counts per grid and in all (the run table is `make runs`), the progress on stderr
    assert "sweep: 4 runs: 2 finished, 2 diverged, 0 failed, 0 cached in " in first
    assert "  smoke: 4 runs: 2 finished, 2 diverged, 0 failed, 0 cached" in first.splitlines()
    assert not any(c.info.run_name in first for c in children)  # no run table
    from pipeline.runs import main as runs_main  # `make runs`: the whole table

    assert runs_main([]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["grid", "run", "status", "cached", "mse", "w_error"]
    assert sorted(line.split()[1] for line in table[1:]) == sorted(
        c.info.run_name for c in children
    )
    assert progress.splitlines()[-1].startswith(
        "[smoke] 4/4 jobs (100%), finished 2, diverged 2, failed 0, cached 0 | elapsed "
    )

    # Then the command line, in one fresh interpreter: --help, --cfg job and bad inputs never
    # import torch or MLflow; the same sweep again finds every job cached without torch.
    paths = [
        ["--help"],
        ["--cfg", "job"],
        ["loss.reduction=avg"],  # Hydra's composition refuses it
        ["train.batch_size=2000"],  # validate() refuses it
        ["+optim.lrr=0.1"],  # validate() refuses the key Hydra let in
        ["-m", f"hydra.sweep.dir={tmp_path}/mr", "sweep=smoke"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_PATHS, json.dumps(paths)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (help_, cfg_job, avg, too_big, unknown, cached) = json.loads(proc.stdout.splitlines()[-1])
    assert help_[0] == 0 and "== Config ==" in help_[1]
    assert cfg_job[0] == 0 and "lr:" in cfg_job[1]
    for code, _, err, *_ in (avg, too_big, unknown):
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "expected one of [mean, sum, nominal]" in avg[2]
    assert too_big[2].startswith("error: train.batch_size=2000: must be between 1 and data.n")
    assert unknown[2].startswith("error: optim.lrr: unknown config key; allowed keys in optim: ")
    for name, result in zip(paths, (help_, cfg_job, avg, too_big, unknown), strict=False):
        assert result[3:] == [False, False], (name, "imported torch or MLflow")
    assert cached[0] == 0 and "0 finished, 0 diverged, 0 failed, 4 cached" in cached[1]
    assert cached[3:] == [False, True]  # MLflow to look the jobs up, never torch
    runs = all_runs(client)
    assert len(runs) == 5  # no new run: not even a parent, nor for a bad input
    assert split(runs)[0][0].data.metrics["n_cached"] == 4


def run_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> Any:
    """The Hydra app in this process (so monkeypatches reach the jobs of the basic launcher)."""
    from pipeline.__main__ import main

    monkeypatch.setattr(sys, "argv", ["pipeline", "-m", f"hydra.sweep.dir={tmp_path}/mr", *args])
    GlobalHydra.instance().clear()
    try:
        return main()
    finally:
        GlobalHydra.instance().clear()


def test_a_failing_job_does_not_stop_the_sweep(
    tmp_path: Path,
    client: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pipeline.job

    real_train = pipeline.job.train

    def flaky(cfgs: Any, **kwargs: Any) -> Any:
        if cfgs[0].model.name.value == "scratch":
            raise RuntimeError("scratch exploded")
        return real_train(cfgs, **kwargs)

    monkeypatch.setattr(pipeline.job, "train", flaky)
    with pytest.raises(SystemExit) as exc:
        run_app(monkeypatch, tmp_path, "sweep=smoke")
    assert exc.value.code == 1
    parents, children = split(all_runs(client))
    status = sorted((c.data.params["model.name"], c.info.status) for c in children)
    assert status == [("linear", "FINISHED")] * 2 + [("scratch", "FAILED")] * 2
    assert all(
        "scratch exploded" in c.data.tags["error"] for c in children if c.info.status == "FAILED"
    )
    parent = parents[0]
    assert parent.info.status == "FAILED"
    assert (parent.data.metrics["n_failed"], parent.data.metrics["n_finished"]) == (2, 1)
    assert "1 finished, 1 diverged, 2 failed, 0 cached" in capsys.readouterr().out

    # the re-run retries only the failed jobs
    monkeypatch.setattr(pipeline.job, "train", real_train)
    run_app(monkeypatch, tmp_path, "sweep=smoke")
    parents, children = split(all_runs(client))
    assert len(parents) == 1 and len(children) == 6  # same parent, resumed
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["resumed"] == "true"


def test_sweep_skips_what_is_already_done_unless_forced(
    tmp_path: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_job(compose_cfg())  # the default config is one of smoke's cells
    run_app(monkeypatch, tmp_path, "sweep=smoke")
    parents, children = split(all_runs(client))
    assert len(children) == 3 and parents[0].data.metrics["n_cached"] == 1
    run_app(monkeypatch, tmp_path, "sweep=smoke", "sweep.force=true")
    parents, children = split(all_runs(client))
    assert len(parents) == 2 and len(children) == 7


def test_bad_value_in_a_sweep_writes_no_run(
    tmp_path: Path,
    client: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        run_app(monkeypatch, tmp_path, "sweep=smoke", "train.batch_size=0,10")
    assert exc.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "train.batch_size=0" in errors[0]
    assert all_runs(client) == []


def test_stale_running_runs_are_marked_killed(client: mlflow.MlflowClient) -> None:
    import socket

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    exp = client.create_experiment("linreg")
    stale = client.create_run(exp, tags={"host": socket.gethostname(), "pid": dead.stdout.strip()})
    alive = client.create_run(
        exp, tags={"host": socket.gethostname(), "pid": str(__import__("os").getpid())}
    )
    SweepCallback().on_multirun_start(compose_cfg())
    assert client.get_run(stale.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


def test_hydra_conventions_sweep_dir_numbering_and_batches(
    tmp_path: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extended sweep in a fixed sweep dir continues the job numbering; an all-cached sweep
    still writes its sweep dir with a summary; the sweeper returns one list per batch."""
    from pipeline.sweep import GridsSweeperImpl

    returned: list[Any] = []
    real_sweep = GridsSweeperImpl.sweep

    def sweep(self: GridsSweeperImpl, arguments: list[str]) -> Any:
        returned.append(real_sweep(self, arguments))
        return returned[-1]

    monkeypatch.setattr(GridsSweeperImpl, "sweep", sweep)
    sweep_dir = tmp_path / "mr"
    grid = ["train.epochs=1", "data.n=50"]
    run_app(monkeypatch, tmp_path, *grid, "optim.lr=0.01,0.02")
    assert [len(batch) for batch in returned[-1]] == [2]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    more = "optim.lr=0.01,0.02,0.05,0.1,0.2"
    run_app(monkeypatch, tmp_path, *grid, more, "hydra.sweeper.max_batch_size=2")
    assert [len(batch) for batch in returned[-1]] == [2, 1]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == list("01234")
    cached = tmp_path / "cached"
    run_app(monkeypatch, tmp_path, *grid, more, f"hydra.sweep.dir={cached}")
    assert returned[-1] == [] and (cached / "multirun.yaml").exists()
    summary = (cached / "summary.csv").read_text().splitlines()
    assert len(summary) == 6 and all(",True," in line for line in summary[1:])
