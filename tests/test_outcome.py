"""Every run says how it ended: one outcome, decided by training, read back by the report.

A small real sweep holds each case of issue 23 (a slow explosion, an explosion cut off by the
end of training, the no_zero_grad mistake, a converged and an unconverged run, an update
error) on every engine its config runs on; the tags are checked run by run, and the report's
back-fill of a store without them must reach the same tags from the logged curves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from omegaconf import DictConfig

from pipeline import outcome
from pipeline.outcome import classify
from pipeline.report import build_report
from tests.test_sweep import run_app

# Full batch (B = n = 100): the stability bound of MSE-mean gradient descent is near lr 1 on
# these data (2/λmax of the Hessian 2·AᵀA/n, A = [X, 1] with standard normal X).
FULL = {"data.n": 100, "train.batch_size": 100, "data.n_val": 0}
CASES: dict[str, tuple[dict[str, object], str]] = {
    # 5% above the bound: the loss grows ×2-3 an update, 10 updates stay far below the
    # divergence limit (10⁶ × initial) yet end far above the start
    "slow_explosion": ({**FULL, "optim.lr": 1.05, "train.epochs": 10}, "diverged"),
    # lr·B/ref with ref = 1 (lr 3): ×25 an update, cut off after 3 updates
    "cut_off": (
        {
            **FULL,
            "optim.lr": 0.03,
            "optim.lr_scaling": "linear",
            "optim.reference_batch_size": 1,
            "train.epochs": 3,
        },
        "diverged",
    ),
    # well inside the bound, long enough to settle; epoch metrics thinned (every 7th epoch
    # and the last): the rule reads the curve as logged
    "converged": (
        {**FULL, "optim.lr": 0.5, "train.epochs": 40, "train.log_every_epochs": 7},
        "converged",
    ),
    # 5 updates of a tiny lr: still falling by a few % an epoch
    "unconverged": ({**FULL, "optim.lr": 0.01, "train.epochs": 5}, "unconverged"),
    # gradients that accumulate: the loss ends above where it started (B = 10, 20 updates)
    "no_zero_grad": (
        {
            "data.n": 100,
            "data.n_val": 0,
            "model": "scratch",
            "model.sgd": "no_zero_grad",
            "train.engine": "d2l",
            "optim.lr": 0.3,
            "train.epochs": 2,
        },
        "diverged",
    ),
    # the in-place update outside no_grad: autograd refuses the first update
    "update_error": (
        {
            "data.n": 100,
            "data.n_val": 0,
            "model": "scratch",
            "model.sgd": "without_no_grad",
            "train.engine": "d2l",
        },
        "update_error",
    ),
}
# the three engines, where the config can run there (no_zero_grad and without_no_grad are
# experiments on the scratch code's own sgd)
ENGINES = {
    "scratch": {"model": "scratch", "train.engine": "d2l"},
    "linear": {"model": "linear", "train.engine": "d2l"},
    "stacked": {"model": "linear", "train.engine": "stacked"},
}


def preset() -> str:
    lines = ["# @package _global_", "sweep:", "  name: outcomes", "hydra:", "  sweeper:"]
    lines += ["    grids:"]
    for name, (params, _) in CASES.items():
        engines = {"": {}} if "train.engine" in params else ENGINES
        for engine, keys in engines.items():
            lines.append(f"      {name}{engine}:")
            lines += [f"        {key}: {value}" for key, value in {**params, **keys}.items()]
            lines.append("        seed: 0,1")
    return "\n".join(lines) + "\n"


def case_of(run: mlflow.entities.Run) -> str:
    p = run.data.params
    for name, (params, _) in CASES.items():
        if all(str(p.get(k, p.get(f"{k}.name"))) == str(v) for k, v in params.items()):
            return name
    raise AssertionError(f"run {run.info.run_name} matches no case")


@pytest.fixture
def outcome_sweep(
    tmp_path: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> list[mlflow.entities.Run]:
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    (tmp_path / "conf" / "sweep" / "outcomes.yaml").write_text(preset())
    run_app(
        monkeypatch,
        tmp_path,
        "sweep=outcomes",
        f"hydra.searchpath=[file://{tmp_path}/conf]",
        "hydra/launcher=stacked",
    )
    exp = client.get_experiment_by_name("linreg")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.sweep = 'outcomes'", max_results=1000)
    return [r for r in runs if r.data.tags.get("sweep_parent") != "true"]


OUTCOME_TAGS = ("outcome", "outcome_reason", "diverged", "cell")


def test_each_case_is_tagged_with_its_outcome_on_every_engine(
    outcome_sweep: list[mlflow.entities.Run], client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    """One sweep (seconds) for the three checks: the tags, the cells, the back-fill."""
    check_outcomes(outcome_sweep)
    check_cells(outcome_sweep)
    check_backfill(outcome_sweep, client, tmp_path)


def check_outcomes(outcome_sweep: list[mlflow.entities.Run]) -> None:
    seen: dict[str, set[str]] = {}
    for run in outcome_sweep:
        tags, case = run.data.tags, case_of(run)
        expected = CASES[case][1]
        assert run.info.status == "FINISHED"
        assert tags["outcome"] == expected, (case, tags["engine"], tags["outcome_reason"])
        assert tags["outcome_reason"]
        assert tags["diverged"] == str(expected == "diverged").lower()
        seen.setdefault(case, set()).add(tags["engine"])
        if expected == "diverged":
            # what the old rule missed: the trainer never stopped it, yet it ends above its start
            assert "diverged_at_step" not in run.data.metrics
            assert "> initial" in tags["outcome_reason"]
    assert seen == {
        name: {"scratch"} if "model.sgd" in params else {"scratch", "linear", "stacked"}
        for name, (params, _) in CASES.items()
    }


def check_cells(outcome_sweep: list[mlflow.entities.Run]) -> None:
    """A cell is the config without its seed."""
    cells: dict[str, set[tuple[str, str]]] = {}
    for run in outcome_sweep:
        t = run.data.tags
        cells.setdefault(t["cell"], set()).add((t["config_hash"], run.data.params["seed"]))
    for members in cells.values():
        # two seeds per cell (each trained by one or two engines: the engine only repeats a
        # measurement), and no config in two cells
        assert {seed for _, seed in members} == {"0", "1"}
    hashes = [h for members in cells.values() for h, _ in members]
    assert len(hashes) == len(set(hashes)) == len(outcome_sweep)


def check_backfill(
    outcome_sweep: list[mlflow.entities.Run], client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    """A store written before outcomes existed: no outcome, outcome_reason or cell tags, and
    `diverged` only where the trainer stopped the run. The report classifies each run from
    its logged train_loss curve, once, and tags it exactly as training did."""
    logged = {r.info.run_id: {k: r.data.tags[k] for k in OUTCOME_TAGS} for r in outcome_sweep}
    for run in outcome_sweep:
        for key in ("outcome", "outcome_reason", "cell"):
            client.delete_tag(run.info.run_id, key)
        old = "diverged_at_step" in run.data.metrics
        client.set_tag(run.info.run_id, "diverged", str(old).lower())
    build_report("latest", tmp_path / "report")
    for run_id, tags in logged.items():
        now = client.get_run(run_id).data.tags
        assert {k: now[k] for k in OUTCOME_TAGS} == tags


def test_classify_names_the_rule_that_fired() -> None:
    assert classify([5.0, 1.0], update_error="RuntimeError: in place\nmore")[0] == "update_error"
    out, why = classify([5.0, 4.0], diverged_at_step=7, divergence_ratio=1e6)
    assert out == "diverged" and "update 7" in why and "1e+06" in why
    out, why = classify([5.0, 2.0, 6.0])
    assert out == "diverged" and why == "final train_loss 6 > initial 5"
    assert classify([5.0, math.nan])[0] == "diverged"
    assert classify([5.0, 1.0, 1.0 + 1e-5])[0] == "converged"  # 1e-5 relative
    assert classify([5.0, 3.0, 2.0])[0] == "unconverged"
    # at the noise floor a run cannot settle further: within the tolerance it is converged
    out, why = classify([5.0, 1.0, 1.01], floor_tol=0.02)
    assert out == "converged" and "floor tolerance" in why
    assert outcome.converged([5.0, 1.0, 1.0]) and not outcome.converged([1.0, 2.0, 2.0])


def test_floor_tolerance_of_a_config_is_the_reports_rule(cfg: Callable[..., DictConfig]) -> None:
    from pipeline import theory

    c = cfg("optim.lr=0.1", "train.batch_size=20", "optim.lr_scaling=sqrt")
    lr = 0.1 * math.sqrt(20 / 10)
    expected = 3 * theory.excess_loss_at_floor(lr, 20, 2, 0.01, 1000, "mse", "mean")
    assert outcome.floor_tolerance_of(c) == pytest.approx(expected, rel=1e-12)
    assert outcome.floor_tolerance_of(cfg("loss=huber")) is None
    assert outcome.floor_tolerance_of(cfg("optim.schedule=cosine")) is None
