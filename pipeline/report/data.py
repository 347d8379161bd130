"""The runs a report reads, and the small helpers every section shares."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pipeline import queries  # noqa: E402
from pipeline.outcome import DIVERGED, classify, floor_tolerance_of  # noqa: E402


@dataclass
class Section:
    key: str  # file stem of its plot
    title: str
    question: str
    preset: str  # the preset whose runs it needs
    table: pd.DataFrame | None = None
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)  # (caption, table)
    answer: str = ""
    figure: str | None = None  # PNG file name in the output folder
    code: str = ""  # a Python snippet the answer refers to (shown as a code block)
    numbers: dict[str, float] = field(default_factory=dict)  # the figures quoted in the answer
    answers: dict[str, Any] = field(default_factory=dict)  # its part of answers.json
    run_ids: list[str] = field(default_factory=list)  # the child runs it used
    outcomes: dict[str, int] = field(default_factory=dict)  # those runs by outcome
    missing: bool = False

    def use(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Record the runs of ``rows`` as evidence of this section (answers.json "runs")."""
        self.run_ids = sorted(set(self.run_ids) | set(rows["run_id"]))
        return rows


# the params a section selects runs by, as typed columns
_COLUMNS: dict[str, tuple[str, Any]] = {
    "model": ("params.model.name", str),
    "sgd": ("params.model.sgd", str),
    "engine": ("tags.engine", str),
    "loss": ("params.loss.name", str),
    "reduction": ("params.loss.reduction", str),
    "delta": ("params.loss.delta", float),
    "init": ("params.init.name", str),
    "lr": ("params.optim.lr", float),
    "lr_scaling": ("params.optim.lr_scaling", str),
    "ref_B": ("params.optim.reference_batch_size", int),
    "B": ("params.train.batch_size", int),
    "epochs": ("params.train.epochs", int),
    "min_updates": ("params.train.min_updates", int),
    "n": ("params.data.n", int),
    "seed": ("params.seed", int),
    "noise": ("params.data.noise", float),
    "outliers": ("params.data.outliers.fraction", float),
    "schedule": ("params.optim.schedule", str),
    "averaging": ("params.optim.averaging", str),
    "drop_last_param": ("params.train.drop_last", str),
    "dtype": ("params.train.dtype", str),
    "optimizer": ("params.optim.name", str),
    "momentum": ("params.optim.momentum", float),
    "beta1": ("params.optim.beta1", float),
    "beta2": ("params.optim.beta2", float),
    "alpha": ("params.optim.alpha", float),
    "eps": ("params.optim.eps", float),
    "zero_features": ("params.data.zero_features", int),
    "n_val": ("params.data.n_val", int),
    "weight_decay": ("params.optim.weight_decay", float),
    "chunk_size": ("params.data.chunk_size", int),
}
# runs logged before optim.name existed were plain SGD (torch.optim.SGD without momentum)
_LOGGED_BEFORE = {"optimizer": "sgd", "momentum": "0.0"}
# what a selection means unless it names the optimiser: d2l's plain SGD, which every question
# but the optimisers' one is about
PLAIN_SGD = {"optimizer": "sgd", "momentum": 0.0}


# final metrics a section reads, as columns (column -> metric; missing metrics are None)
_METRICS = {
    name: name
    for name in (
        "mse",
        "val_mse",
        "gap",
        "ols_mse",
        "ols_val_mse",
        "w_error",
        "b_error",
        "ols_w_error",
        "train_time_s",
        "data_mb",
        "peak_rss_mb",
        "rss_start_mb",
    )
} | {"diverged_at": "diverged_at_step"}


class SweepData:
    """The runs of one sweep: one row per job of the parent's ``jobs.json`` (config hash),
    joined with the newest FINISHED run of that config in the experiment (cached runs too)."""

    def __init__(self, uri: str, parent: Run):
        self.uri, self.parent = uri, parent
        jobs = json.loads(queries.artifact_text(uri, parent.info.run_id, "jobs.json"))
        finished = queries.finished_by_hash(uri, parent.info.experiment_id)
        runs = queries.runs_frame(
            [finished[h] for h in {j["config_hash"] for j in jobs} if h in finished]
        )
        if runs.empty:
            self.df = runs
            return
        df = backfill_outcomes(uri, runs.drop_duplicates("tags.config_hash"))
        for name, value in _LOGGED_BEFORE.items():
            col = _COLUMNS[name][0]
            df = df.assign(**{col: df[col].fillna(value) if col in df else value})
        typed = {
            name: df[col].astype(kind) if col in df else None
            for name, (col, kind) in _COLUMNS.items()
        }
        self.df = df.assign(
            **typed,
            drop_last=df["params.train.drop_last"] == "True",
            # runs logged before data.source existed held their data in memory
            source=df.get("params.data.source", pd.Series("memory", index=df.index)).fillna(
                "memory"
            ),
            data=np.where(
                df["params.data.outliers.fraction"].astype(float) > 0, "outliers", "clean"
            ),
            # how each run ended, decided once by training (pipeline.outcome); `status` starts
            # as the same and is what a section counts as converged (the fitting section also
            # counts interpolating runs converged), `outcome` stays the tag
            outcome=df["tags.outcome"],
            status=df["tags.outcome"],
            outcome_reason=df["tags.outcome_reason"],
            cell=df["tags.cell"],
            diverged=df["tags.outcome"] == DIVERGED,
            update_error=df.get("tags.update_error"),
            **{key: df.get(f"metrics.{name}") for key, name in _METRICS.items()},
            updates=df["metrics.updates"].astype(int),
            # features: the true weights, then the zero-weight ones
            d=df["params.data.true_w"].map(lambda w: len(str(w).split(",")))
            + (typed["zero_features"] if typed["zero_features"] is not None else 0),
        )

    def select(self, **equal: Any) -> pd.DataFrame:
        """Runs whose params equal the given values (a list or set: any of them). The same
        settings trained by two engines count once (the d2l code's run first), unless the
        selection is by engine. Only plain SGD runs unless the selection names ``optimizer``
        (:data:`PLAIN_SGD`)."""
        rows = self.df
        if "optimizer" not in equal:
            equal = PLAIN_SGD | equal
        for key, value in equal.items():
            if rows.empty:
                break
            allowed = value if isinstance(value, list | set | tuple) else [value]
            rows = rows[rows[key].isin(allowed)]
        if "engine" not in equal and not rows.empty:
            params = [c for c in rows if c.startswith("params.") and c != "params.train.engine"]
            rows = rows.sort_values("engine", key=lambda e: e == "stacked", kind="stable")
            rows = rows.drop_duplicates(subset=params)
        return rows

    def beyond(self, filter_string: str) -> pd.DataFrame:
        """FINISHED runs of the experiment that match an MLflow filter, whichever sweep made
        them (newest first): heavy presets run on their own (``stream_big``), and a report
        uses their runs when the store has them."""
        runs = queries.search_all(
            self.uri,
            self.parent.info.experiment_id,
            f"attributes.status = 'FINISHED' and {filter_string}",
            order_by=["attributes.start_time DESC"],
        )
        return queries.runs_frame(runs)

    def history(self, run_id: str, key: str) -> list[float]:
        return [v for _, v in self.steps(run_id, key)]

    def steps(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of a metric: the epoch (or update) index of each value."""
        return queries.metric_history(self.uri, run_id, key)

    def config(self, run_id: str) -> DictConfig:
        return queries.load_run_config(self.uri, run_id)


def backfill_outcomes(uri: str, df: pd.DataFrame) -> pd.DataFrame:
    """Runs logged before outcomes existed (no ``outcome`` tag) classified from their logged
    curves by training's own function (:func:`pipeline.outcome.classify`), and tagged once in
    the store (``outcome``, ``outcome_reason``, ``diverged`` made consistent, ``cell`` when
    missing): the next report reads the tags. The frame comes back with the tags filled."""
    from pipeline.identity import cell_name
    from pipeline.tracking import outcome_tags, tag_outcomes

    missing = df.index if "tags.outcome" not in df else df.index[df["tags.outcome"].isna()]
    if "tags.cell" not in df:
        df = df.assign(**{"tags.cell": None})
    if len(missing) == 0:
        return df
    # once per store: about 0.1 s a run (its config artifact, its train_loss curve, one write)
    print(
        f"report: classifying {len(missing)} runs logged before outcomes existed (once)",
        file=sys.stderr,
        flush=True,
    )
    df = df.copy()
    if "tags.outcome" not in df:
        df["tags.outcome"] = None
        df["tags.outcome_reason"] = None
    writes: dict[str, dict[str, str]] = {}
    for i in missing:
        row = df.loc[i]
        run_id = str(row["run_id"])
        cfg = queries.load_run_config(uri, run_id)
        losses = [v for _, v in queries.metric_history(uri, run_id, "train_loss")]
        at = row.get("metrics.diverged_at_step")
        at_step = None if at is None or pd.isna(at) else int(at)
        if at_step is None and row.get("tags.diverged") == "true":  # no metric: its last update
            at_step = int(row.get("metrics.updates", 0) or 0)
        error = row.get("tags.update_error")
        outcome, reason = classify(
            losses,
            at_step,
            None if error is None or pd.isna(error) else str(error),
            floor_tolerance_of(cfg),
            float(cfg.train.divergence_ratio),
        )
        tags = outcome_tags(outcome, reason)
        if pd.isna(row.get("tags.cell")):
            tags["cell"] = cell_name(cfg)
        writes[run_id] = tags
        for key, value in tags.items():
            df.at[i, f"tags.{key}"] = value
    tag_outcomes(uri, writes)
    return df


class MissingRuns(Exception):
    """The sweep has no runs for a section: it prints the preset that produces them."""


def need(rows: pd.DataFrame, varying: str | None = None) -> pd.DataFrame:
    """The rows, or MissingRuns when there are none (or ``varying`` takes a single value)."""
    if rows.empty or (varying is not None and rows[varying].nunique() < 2):
        raise MissingRuns
    return rows


def fmt(x: float) -> str:
    return "diverged" if x is None or not math.isfinite(x) else f"{x:.3g}"


def final(rows: pd.DataFrame, key: str) -> pd.Series:
    """A final metric, inf for a diverged run (its last logged value is not a result)."""
    return rows[key].where(~rows["diverged"], math.inf)


def new_figure() -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def save(fig: plt.Figure, out: Path, key: str) -> str:
    name = f"{key}.png"
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name
