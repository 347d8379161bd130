"""The answers to the chapter's other questions (issue 12: fitting, gradients' neighbours,
no_grad, streaming, the catalogue, optimisers, the book) are rules over the numbers of a small
real sweep of their own (run beside tests/test_answers.py's on the other xdist worker)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_answers import answers_of_sweep

# Curves are thinned where no rule needs their resolution: the per-update ones of streaming
# and torch_losses (train.log_every), the 400 epochs of the full-batch fitting grids to 41
# points (train.log_every_epochs). The store writes are most of the sweep's time. torch_losses
# runs 3000 updates (the preset 6000): L1's tail average is then 0.94x its LAD line and 21x
# closer than its last iterate, the margins the rules need.
CHAPTER = """\
# @package _global_
sweep:
  name: answers_chapter
hydra:
  sweeper:
    seeds: 5
    grids:
      streaming:
        data.n: 10000,100000,300000
        data.source: memory,stream
        train.batch_size: 1000
        train.epochs: 1
        train.log_every: 10
        optim.lr: 0.3
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
        train.min_updates: 3000
        train.log_every: 3000
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
      fitting:
        data.n: 50
        data.noise: 1.0
        data.zero_features: 0,38
        train.batch_size: 50
        train.epochs: 1
        train.min_updates: 400
        train.log_every_epochs: 10
        optim.lr: 0.1
      fitting_remedies:
        data.n: 50
        data.noise: 1.0
        data.zero_features: 38
        optim.weight_decay: 0.1
        train.batch_size: 50
        train.epochs: 1
        train.min_updates: 400
        train.log_every_epochs: 10
        optim.lr: 0.1
      fitting_minibatch:
        data.n: 50
        data.noise: 1.0
        data.zero_features: 38
        train.batch_size: 10
        train.epochs: 1
        train.min_updates: 400
        optim.lr: 0.1
      fitting_underfit:
        data.n: 50
        data.noise: 1.0
        train.batch_size: 50
        train.epochs: 1
        train.min_updates: 400
        train.log_every_epochs: 10
        optim.lr: 0.001
"""


@pytest.fixture(scope="session")
def answers(tmp_path_factory: pytest.TempPathFactory, template_store: Path) -> Iterator[Any]:
    yield from answers_of_sweep(tmp_path_factory, template_store, "answers_chapter", CHAPTER)


def test_streamed_memory_stays_at_a_chunk_while_in_memory_grows_with_n(answers: Any) -> None:
    st = answers[0]["streaming"]
    assert st["n"] == [10000, 100000, 300000]
    mem, stream = st["memory"], st["stream"]
    assert st["memory_data_slope"] == pytest.approx(1, abs=1e-9)  # 24 bytes an example
    assert stream["data_mb"] == [st["chunk_size"] * 3 * 8 / 1e6] * 3  # one chunk held
    assert all(s == 5 for s in mem["seeds"] + stream["seeds"])
    # measured: the process's peak RSS above its start grows ∝ n in memory, not streamed
    peaks = {k: st[k]["peak_above_start_median"] for k in ("memory", "stream")}
    assert st["memory_grows_with_n"] and st["memory_slope"] > 0.8, peaks
    assert st["stream_flat"] and st["stream_rise_over_memory_rise"] < 0.1, peaks
    assert st["stream_over_memory_peak"] < 0.25, peaks
    # the same estimate: least squares from streamed AᵀA, Aᵀy reaches the OLS error too
    for ols_mem, ols_stream in zip(mem["ols_w_error_rms"], stream["ols_w_error_rms"], strict=True):
        assert 0.3 < ols_stream / ols_mem < 3
    assert "big" not in st  # no 1e8 run in this store
    sections = {s.key: s for s in answers[1]}
    assert "grows with n" in sections["streaming"].answer


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


def test_fitting_names_an_overfit_and_an_underfit_configuration(answers: Any) -> None:
    data, sections = answers
    fit = data["fitting"]
    over, under = fit["overfit"], fit["underfit"]
    # d = 40 features for n = 50: fits the noise (train below σ² = 1), val far above it
    assert over["config"]["d"] == 40 and over["regime"] == "overfit"
    assert over["train_mse_mean"] < 1.0 and over["val_mse_mean"] > 1.5
    assert over["gap_mean"] > 3 * over["gap_sd"] / 5**0.5
    # d = 2 (the true model) at lr 0.001 × 400 updates: has not fitted its training data
    assert under["config"]["d"] == 2 and under["config"]["lr"] == 0.001
    assert under["regime"] == "underfit" and under["train_mse_mean"] > 2.0
    for cell in (over, under):
        assert cell["seeds"] == [0, 1, 2, 3, 4] and cell["val_mse_sd"] > 0
    # the true model at lr 0.1 fits well, and least squares on the same data follows theory
    by_d = fit["by_d"]
    assert by_d["2"]["regime"] == "good fit"
    for d, (low, high) in {"2": (0.8, 1.25), "40": (0.5, 2.0)}.items():
        assert low < by_d[d]["ols_val_mse_mean"] / by_d[d]["theory_ols_val_mse"] < high
    # the remedies, measured at d = 40: weight decay helps, minibatch noise does not
    assert fit["weight_decay"]["reduces_val_mse"] is True
    assert fit["minibatch"]["noise_reduces_overfitting"] is False
    stop = fit["early_stopping"]
    assert stop["early_stopped_val_mse_mean"] <= stop["final_val_mse_mean"]
    answer = {s.key: s for s in sections}["fitting"].answer
    assert "minibatch noise does NOT prevent overfitting" in answer
