"""The FAQ report: sections present where runs are, numbers equal to what the runs hold."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline.report import ReportError, build_report
from pipeline.report import main as report_main
from tests.test_sweep import run_app

# A few cells of the real presets, so the test sweep takes seconds. Sections select runs by
# their params, so the grid names do not matter.
SMALL_PRESET = """\
# @package _global_
sweep:
  name: report_small
hydra:
  sweeper:
    grids:
      some_lr:
        model: linear
        train.engine: d2l
        optim.lr: 0.03,0.3,3
      sum_scaled:
        model: linear
        train.engine: d2l
        loss.reduction: sum
        optim.lr_scaling: inverse
        optim.reference_batch_size: 1
      sum_unscaled:
        model: linear
        train.engine: d2l
        train.batch_size: 100
        loss.reduction: sum
      some_loss:
        loss: squared,huber
        data: outliers
        train.epochs: 1
        train.min_updates: 600
        optim.averaging: tail
"""


@pytest.fixture
def small_sweep(
    tmp_path: Path, client: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> mlflow.entities.Run:
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    (tmp_path / "conf" / "sweep" / "report_small.yaml").write_text(SMALL_PRESET)
    run_app(
        monkeypatch, tmp_path, "sweep=report_small", f"hydra.searchpath=[file://{tmp_path}/conf]"
    )
    exp = client.get_experiment_by_name("linreg")
    parents = client.search_runs([exp.experiment_id], "tags.sweep_parent = 'true'")
    assert len(parents) == 1
    return parents[0]


def runs_of(client: mlflow.MlflowClient, parent: mlflow.entities.Run) -> list:
    return client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )


def test_report_numbers_come_from_the_runs(
    small_sweep: mlflow.entities.Run, client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    markdown, sections = build_report("latest", tmp_path / "report")
    by_key = {s.key: s for s in sections}
    runs = runs_of(client, small_sweep)
    lr_runs = [
        r
        for r in runs
        if r.data.tags["sweep"] == "report_small"
        and r.data.params["loss.reduction"] == "mean"
        and r.data.params["data.outliers.fraction"] == "0.0"
    ]

    # 1. learning rate: the largest stable lr and the first diverging one, from the runs
    lr = by_key["lr"].numbers
    stable = [
        float(r.data.params["optim.lr"]) for r in lr_runs if r.data.tags["diverged"] == "false"
    ]
    diverged = [
        float(r.data.params["optim.lr"]) for r in lr_runs if r.data.tags["diverged"] == "true"
    ]
    assert lr["sgd_largest_stable_lr"] == max(stable) == 0.3
    assert lr["sgd_first_diverged_lr"] == min(diverged) == 3.0
    assert "the smallest that diverged is 3" in markdown
    # the mean-square bound of minibatch SGD, 1/(1 + (d+2)/B) for d = 2, B = 10
    assert lr["minibatch_bound"] == pytest.approx(1 / (1 + 4 / 10))

    # 3. reduction: max |delta| over every epoch between mean and sum with lr/B
    def hist(run: mlflow.entities.Run, key: str) -> np.ndarray:
        return np.array(
            [
                m.value
                for m in sorted(
                    client.get_metric_history(run.info.run_id, key), key=lambda m: m.step
                )
            ]
        )

    mean = next(
        r
        for r in runs
        if r.data.params["loss.reduction"] == "mean"
        and r.data.params["optim.lr"] == "0.03"
        and r.data.params["data.outliers.fraction"] == "0.0"
    )
    total = next(r for r in runs if r.data.params["optim.lr_scaling"] == "inverse")
    expected = max(
        float(np.abs(hist(mean, k) - hist(total, k)).max()) for k in ("mse", "w_error", "b_error")
    )
    assert by_key["reduction"].answers["max_abs_diff"] == expected < 1e-9
    unscaled = next(r for r in runs if r.data.params["train.batch_size"] == "100")
    assert unscaled.data.tags["diverged"] == "true"
    assert "it diverged in 1/1 runs at B=100" in markdown

    # 4. per-sample gradients: the mean of per-sample gradients is the batch gradient
    assert by_key["per_sample"].numbers["max_abs_delta"] < 1e-12

    # 5. Huber vs squared on outliers (converged, averaged): the ratio of the runs' own w_error
    huber = next(r for r in runs if r.data.params["loss.name"] == "huber")
    squared = next(r for r in runs if r.data.params["loss.name"] == "squared")
    ratio = squared.data.metrics["w_error"] / huber.data.metrics["w_error"]
    assert by_key["huber"].answers["outliers_squared_over_huber"] == pytest.approx(ratio)
    assert ratio > 3  # Huber's capped gradient: outliers pull with force δ

    # 8. Newton: one step reaches the least-squares solution
    assert by_key["newton"].numbers["newton_w_error"] == pytest.approx(
        mean.data.metrics["ols_w_error"], rel=1e-6
    )

    # missing presets say how to produce them
    for key, preset in [
        ("batch_size", "batch_size"),
        ("init", "init"),
        ("data_size", "data_size"),
        ("partial_batch", "partial_batch"),
        ("fitting", "fitting"),
    ]:
        assert by_key[key].missing
        assert f"make sweep SWEEP={preset}" in markdown
    for key in ("lr", "reduction", "per_sample", "huber", "newton"):
        assert not by_key[key].missing and by_key[key].answer

    # the report is on the parent run
    files = {a.path for a in client.list_artifacts(small_sweep.info.run_id, "report")}
    assert {
        "report/report.md",
        "report/report.html",
        "report/lr.png",
        "report/reduction.png",
        "report/huber.png",
    } <= files
    assert (tmp_path / "report" / "report.md").read_text() == markdown


def test_report_without_a_sweep_says_so(
    client: mlflow.MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ReportError, match="no sweep"):
        build_report("latest")
    assert report_main(["--sweep", "0" * 32]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: no run")


def test_make_report_prints_the_report_path_and_each_answer_in_one_sentence(
    small_sweep: mlflow.entities.Run,
    client: mlflow.MlflowClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The sweep's last lines, and `make report`'s: an existing report.html, the way to the
    runs, and one line per answered section in the report's own words (answers.json)."""
    capsys.readouterr()
    assert report_main(["--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("report: ") and out[0].endswith("/report/report.html")
    assert Path(out[0].removeprefix("report: ")).is_file()
    assert out[1].startswith("runs: `make ui`")
    answers = json.loads((tmp_path / "report" / "answers.json").read_text())
    markdown = (tmp_path / "report" / "report.md").read_text()
    digest = answers["digest"]
    answered = {k for k in ("lr", "reduction", "per_sample", "huber", "newton")}
    assert answered <= {d["key"] for d in digest}
    for d in digest:
        # the first sentence of the report's answer, set in bold there
        assert f"**Answer.** **{d['answer']}**" in markdown
        assert f"  - {d['title']}: {d['answer']}" in out
    assert len(out) == 3 + len(digest)


@pytest.mark.parametrize(
    ("text", "first"),
    [
        (
            "Sweep lr on a log scale and read the final loss. Then stop.",
            "Sweep lr on a log scale and read the final loss.",
        ),
        (  # too short alone: the next sentence joins it
            "Yes. Differentiation is linear, so the batch gradient is their mean. More.",
            "Yes. Differentiation is linear, so the batch gradient is their mean.",
        ),
        (  # an abbreviation and a number do not end a sentence
            "Use a small lr, e.g. 0.03 for B = 10 as d2l does. Larger ones diverge.",
            "Use a small lr, e.g. 0.03 for B = 10 as d2l does.",
        ),
        ("It converges below 0.5 times the bound", "It converges below 0.5 times the bound"),
    ],
)
def test_first_sentence(text: str, first: str) -> None:
    from pipeline.digest import first_sentence

    assert first_sentence(text) == first
