"""The report's conclusions are rules over the numbers: run a small real sweep and check them
against theory (stability bound, SGD noise floor, equal-update batch comparison)."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.report import build_report
from tests.test_sweep import run_app

# one sweep for the module (a session fixture: xdist may interleave other modules' tests,
# which would tear a module fixture down), its tests on one xdist worker
pytestmark = pytest.mark.xdist_group("answers")

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
        optim.lr: 0.9,0.95,1.0,1.05
      stability_squared:
        loss: squared
        train.batch_size: 1000
        train.epochs: 200
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
      no_grad:
        model: scratch
        train.engine: d2l
        train.epochs: 1
        model.sgd: no_grad,without_no_grad,rebind,rebind_detach,no_zero_grad
      book_scratch:
        model: scratch
        loss: squared
        loss.reduction: nominal
        train.dtype: float32
        train.engine: d2l
      book_concise:
        model: linear
        train.dtype: float32
        train.engine: d2l
      torch_losses:
        loss: mse,l1
        data.outliers.fraction: 0.05
        train.epochs: 1
        train.min_updates: 6000
        optim.averaging: tail
      optimizers_sgd:
        train.epochs: 1
        train.min_updates: 1000
        train.log_every: 50
        optim.lr: 0.01,0.03,1
      optimizers_adam:
        optim: adam
        train.epochs: 1
        train.min_updates: 1000
        train.log_every: 50
        optim.lr: 0.01,0.03,1
"""


@pytest.fixture(scope="session")
def answers(tmp_path_factory: pytest.TempPathFactory, template_store: Path) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("answers")
    (tmp / "conf" / "sweep").mkdir(parents=True)
    (tmp / "conf" / "sweep" / "answers_small.yaml").write_text(PRESET)
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
            "sweep=answers_small",
            "hydra/launcher=stacked",
            f"hydra.searchpath=[file://{tmp}/conf]",
        )
        _, sections = build_report("latest", tmp / "report")
        yield json.loads((tmp / "report" / "answers.json").read_text()), sections


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


def test_no_grad_experiment_shows_what_breaks(answers: Any) -> None:
    a = answers[0]["no_grad"]
    assert set(a) == {"no_grad", "without_no_grad", "rebind", "rebind_detach", "no_zero_grad"}
    assert all(v["seeds"] == 5 for v in a.values())
    # in place outside no_grad: autograd refuses at the first update
    assert a["without_no_grad"]["raises"] and a["without_no_grad"]["updates"] == 0
    assert "in-place operation" in a["without_no_grad"]["error"]
    # out of place: the same numbers, but the graph grows with every update
    assert a["rebind"]["graph_grows"] and a["rebind"]["same_trajectory_as_no_grad"]
    assert a["rebind"]["graph_nodes_last"] > 10 * a["no_grad"]["graph_nodes_last"]
    # detach() cuts it: d2l's graph size and d2l's run
    detached = a["rebind_detach"]
    assert not detached["graph_grows"] and detached["same_trajectory_as_no_grad"]
    assert a["rebind_detach"]["graph_nodes_last"] == a["no_grad"]["graph_nodes_last"]
    # no zero_grad: the gradients accumulate and the run ends far from the truth
    assert a["no_zero_grad"]["w_error"]["mean"] > 100 * a["no_grad"]["w_error"]["mean"]
    assert a["no_zero_grad"]["w_error_vs_no_grad"].startswith("larger")


def test_the_book_sits_inside_our_seeds_and_the_half_is_measured(answers: Any) -> None:
    book = answers[0]["book"]
    assert book["seeds"] == 5
    # every printed value is inside the 95% prediction interval of one more seed
    assert all(book["book_inside"].values()) and len(book["book_inside"]) == 6
    # epoch 3 sits at the noise floor computed from σ (σ²/2 for ½-squared, σ² for MSE)
    assert book["floor"]["3.2"] == pytest.approx(0.01**2 / 2, rel=0.01)
    assert book["floor"]["3.3"] == pytest.approx(0.01**2, rel=0.01)
    for chapter in ("3.2", "3.3"):
        assert 0.9 < book["ours_over_floor"][chapter] < 1.1
    # the ½: the same fit printed at half scale once both are at the floor
    assert book["half_ratio_epoch3_mean"] == pytest.approx(2, rel=0.03)
    assert book["mse_ratio_epoch3_mean"] == pytest.approx(1, rel=0.02)
    # ... and half the gradient: after epoch 1 3.2 is far behind, not at half of 3.3's loss
    assert book["half_ratio_by_epoch"][0] < 0.05


def test_catalogue_and_the_robust_losses_with_outliers(answers: Any) -> None:
    cat = answers[0]["catalogue"]
    assert set(cat["trained_losses"]) == {"HuberLoss", "L1Loss", "MSELoss", "SmoothL1Loss"}
    five = cat["comparison"]["0.05"]
    assert five["l1"]["vs_mse"] == "smaller error than MSE" and five["l1"]["seeds"] == 5
    assert five["l1"]["mse_over_loss"] > 10  # 5% of labels with N(0, 10²) noise
    # MSE's error is the OLS error with σ² + p·s²; L1 sits near its LAD line (below it: SGD
    # smooths |r|), and its last iterate stays about lr away while the average does not
    assert 0.5 < five["mse"]["w_error_rms"] / five["mse"]["theory"] < 2
    assert 0.5 < five["l1"]["w_error_rms"] / five["l1"]["theory"] < 2
    assert five["l1"]["last_iterate_mean"] > 10 * five["l1"]["w_error_mean"]


def test_optimizer_windows_follow_the_rule_and_the_runs(answers: Any) -> None:
    data, sections = answers
    opt = data["optimizers"]
    assert set(opt) == {"sgd", "adam"}
    for a in opt.values():
        lo, hi = a["window"]
        assert a["width_decades"] == pytest.approx(math.log10(hi / lo))
        assert lo <= a["best_lr"] <= hi and a["seeds"] == 5 and a["runs"] == 15
        assert {lo, hi} <= set(a["good_lrs"])
        ilo, ihi = a["window_interpolated"]  # between the window and its bad neighbours
        assert ilo <= lo and ihi >= hi and a["width_interpolated_decades"] >= a["width_decades"]
    sgd, adam = opt["sgd"], opt["adam"]
    # what these runs show: SGD diverges at lr 1 (above its mean-square bound 0.71 for B = 10)
    # and is within 2x of its best at 0.01 and 0.03; Adam diverges nowhere, but its error
    # grows faster with lr above its best (step ~ lr per coordinate: floor ∝ lr, not √lr)
    assert sgd["diverged_runs"] == 5 and adam["diverged_runs"] == 0
    assert sgd["window"] == [0.01, 0.03] and adam["window"] == [0.03, 0.03]
    assert adam["slope_above_best"] > 2 * sgd["slope_above_best"]
    # SGD's theory (transient + floor) puts its window around the measured one
    assert sgd["theory_window"][0] <= 0.01 and sgd["theory_window"][1] >= 0.03
    answer = {s.key: s for s in sections}["optimizers"].answer
    assert "Widest: sgd." in answer and "no run of adam diverged" in answer
