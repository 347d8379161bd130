"""The report's conclusions are rules over the numbers: run a small real sweep and check them
against theory (stability bound, SGD noise floor, equal-update batch comparison)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.report import build_report
from tests.test_sweep import run_app

# one sweep for the module (a session fixture: the worker that runs this file builds it once);
# the chapter's other questions have their own sweep in tests/test_answers_chapter.py, so the
# two run on the two xdist workers at once

# The stability grids' curves are thinned: no section reads their per-update curves, and
# their 200 epoch points become 21 (train.log_every, train.log_every_epochs). The store
# writes are most of a sweep's time. The same in the chapter's sweep.
PRESET = """\
# @package _global_
sweep:
  name: answers_small
hydra:
  sweeper:
    seeds: 5
    grids:
      stability_mse:
        train.batch_size: 1000
        train.epochs: 200
        train.log_every: 200
        train.log_every_epochs: 10
        optim.lr: 0.9,0.95,1.0,1.05
      stability_squared:
        loss: squared
        train.batch_size: 1000
        train.epochs: 200
        train.log_every: 200
        train.log_every_epochs: 10
        optim.lr: 1.8,1.9,2.0,2.1
      some_lr:
        optim.lr: 0.01,0.03,0.1
      batch_size_updates:
        train.batch_size: 1,10,100
        train.epochs: 1
        train.min_updates: 3000
      d2l_pair:
        model: linear,scratch
        train.engine: d2l
"""


def answers_of_sweep(
    tmp_path_factory: pytest.TempPathFactory, template_store: Path, name: str, preset: str
) -> Iterator[Any]:
    """Run ``preset`` (a sweep preset's text, called ``name``) into a store of its own with the
    stacked launcher, build the report; yields (answers.json, the report's sections)."""
    tmp = tmp_path_factory.mktemp(name)
    (tmp / "conf" / "sweep").mkdir(parents=True)
    (tmp / "conf" / "sweep" / f"{name}.yaml").write_text(preset)
    db = tmp / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    with sqlite3.connect(template_store) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.setenv("LINREG_OUTPUTS", str(tmp / "hydra"))
        run_app(
            mp,
            tmp,
            f"sweep={name}",
            "hydra/launcher=stacked",
            f"hydra.searchpath=[file://{tmp}/conf]",
        )
        _, sections = build_report("latest", tmp / "report")
        yield json.loads((tmp / "report" / "answers.json").read_text()), sections


@pytest.fixture(scope="session")
def answers(tmp_path_factory: pytest.TempPathFactory, template_store: Path) -> Iterator[Any]:
    yield from answers_of_sweep(tmp_path_factory, template_store, "answers_small", PRESET)


def test_answers_json_has_the_documented_keys(answers: Any) -> None:
    data, sections = answers
    assert set(data["lr"]["max_stable_theory"]) == {"mse-mean", "squared-mean"}
    assert set(data["batch_size"]["equal_updates"]) == {"1", "10", "100"}
    for cell in data["batch_size"]["equal_updates"].values():
        assert cell["seeds"] == 5 and cell["w_error_sd"] > 0
    used = data["runs"]["lr"]
    assert len(used) == (8 + 3) * 5 and len(set(used)) == len(used)


def test_stability_bound_matches_theory_within_the_grid(answers: Any) -> None:
    lr = answers[0]["lr"]
    # full-batch GD on a quadratic: the largest stable lr of a 5% grid brackets 2/λmax
    assert lr["bound_within_grid_resolution"] == {"mse-mean": True, "squared-mean": True}
    theory, measured = lr["max_stable_theory"], lr["max_stable_measured"]
    assert theory["squared-mean"] == pytest.approx(2 * theory["mse-mean"], rel=1e-12)
    # ½-squared doubles the bound: measured ratio 2 within the grid's resolution
    assert lr["squared_over_mse_measured"] == pytest.approx(2, rel=0.06)
    for key in theory:
        assert 0.94 < measured[key] / theory[key] < 1.06


def test_noise_floor_within_2x_of_theory_in_every_cell(answers: Any) -> None:
    floor = answers[0]["batch_size"]["noise_floor"]
    assert floor["cells"] >= 3  # the 3 equal-update cells (and lr cells whose seeds converged)
    assert floor["all_within_2x"] and 0.5 < floor["ratio_min"] <= floor["ratio_max"] < 2


def test_equal_updates_error_falls_with_batch_size_until_ols(answers: Any) -> None:
    b = answers[0]["batch_size"]
    assert b["equal_updates_monotone"] is True
    means = [b["equal_updates"][k]["w_error_mean"] for k in ("1", "10", "100")]
    assert means[0] > means[1]  # the floor shrinks ∝ η/B ...
    assert means[2] < 2.5 * b["ols_w_error_theory"]  # ... down to the OLS error
    sections = {s.key: s for s in answers[1]}
    assert "falls with B" in sections["batch_size"].answer


def test_gradient_norms_sit_at_the_label_noise_floor(answers: Any) -> None:
    g = answers[0]["gradients"]
    assert set(g["per_batch_size"]) == {"1", "10", "100"}
    for cell in g["per_batch_size"].values():
        assert cell["seeds"] == 5
        for part in ("w", "b"):
            assert 0.8 <= cell[f"ratio_{part}"] <= 1.25, cell
    assert g["matches_theory"] is True
    assert -0.6 < g["rms_w_slope_vs_B"] < -0.4  # ∝ 1/√B
    # the two d2l codes produce the same gradients on the same batches
    assert g["scratch_vs_linear_seeds"] == 5 and g["scratch_vs_linear_max_rel_diff"] < 1e-9
    section = {s.key: s for s in answers[1]}["gradients"]
    assert "net[0].weight.grad" in section.code and "every cell meets" in section.answer
