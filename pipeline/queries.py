"""Reading runs back: the one query module of report, rerun, ui, sweep and bench.

Everything takes the tracking URI and goes through the tracking layer's client
(:func:`pipeline.store.get_client`): no global tracking URI, no second client.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from pipeline.config import Config
from pipeline.store import get_client


def search_all(uri: str, experiment_id: str, filter_string: str = "", **kwargs: Any) -> list[Run]:
    """Every run matching the filter, following MLflow's pages."""
    client = get_client(uri)
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=5000, page_token=token, **kwargs
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def experiment_id(uri: str, name: str) -> str | None:
    exp = get_client(uri).get_experiment_by_name(name)
    return None if exp is None else str(exp.experiment_id)


def get_run(uri: str, run_id: str) -> Run | None:
    """The run, or None when the store has no such id."""
    try:
        return get_client(uri).get_run(run_id)
    except MlflowException:
        return None


def finished_by_hash(
    uri: str,
    experiment_id: str,
    wanted: set[str] | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Run]:
    """The newest FINISHED run of each config_hash in the experiment. With ``parent_run_id``,
    that sweep's own runs are read first, and the whole experiment only if some ``wanted``
    hash is not among them: a re-run of a sweep reads its own runs, not the store's history."""
    if parent_run_id is not None and wanted is not None:
        own = newest_by_hash(
            search_all(
                uri,
                experiment_id,
                f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'FINISHED'",
            )
        )
        if wanted <= own.keys():
            return own
    return newest_by_hash(search_all(uri, experiment_id, "attributes.status = 'FINISHED'"))


def newest_by_hash(runs: list[Run]) -> dict[str, Run]:
    out: dict[str, Run] = {}
    for run in runs:
        h = run.data.tags.get("config_hash")
        if h and (h not in out or run.info.start_time > out[h].info.start_time):
            out[h] = run
    return out


def children(uri: str, parent: Run) -> list[Run]:
    """The child runs of a parent run, oldest first."""
    return search_all(
        uri,
        parent.info.experiment_id,
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )


def newest_run(uri: str, experiment_id: str, filter_string: str) -> Run | None:
    """The most recently started run matching the filter, if any."""
    runs = get_client(uri).search_runs(
        [experiment_id], filter_string, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0] if runs else None


def latest_sweep(uri: str, experiment: str = "linreg") -> Run | None:
    """The newest sweep parent run of the experiment, if any."""
    exp_id = experiment_id(uri, experiment)
    if exp_id is None:
        return None
    runs = get_client(uri).search_runs(
        [exp_id],
        "tags.sweep_parent = 'true'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


class SweepNotFound(LookupError):
    """No such sweep in the store; the message is one line."""


def find_sweep(uri: str, sweep: str = "latest") -> Run:
    """A sweep's parent run: the newest one for ``"latest"``, else the run of that id, which
    must be a sweep's parent. :class:`SweepNotFound` (one line) otherwise."""
    parent = latest_sweep(uri) if sweep == "latest" else get_run(uri, sweep)
    if parent is None:
        raise SweepNotFound(
            "no sweep in the store yet: run `make sweep` first"
            if sweep == "latest"
            else f"no run {sweep!r} in {uri}"
        )
    if parent.data.tags.get("sweep_parent") != "true":
        raise SweepNotFound(f"run {sweep} is not a sweep's parent run")
    return parent


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, by step."""
    return sorted((m.step, m.value) for m in get_client(uri).get_metric_history(run_id, key))


def artifact_names(uri: str, run_id: str, path: str | None = None) -> set[str]:
    """The artifacts of a run at its top level, or in its folder ``path``."""
    return {a.path for a in get_client(uri).list_artifacts(run_id, path)}


def artifact_text(uri: str, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(get_client(uri).download_artifacts(run_id, path, tmp)).read_text()


def load_run_config(uri: str, run_id: str) -> DictConfig:
    """The resolved config a run logged (its config.yaml artifact), typed by the schema."""
    loaded = OmegaConf.create(artifact_text(uri, run_id, "config.yaml"))
    cfg = OmegaConf.merge(OmegaConf.structured(Config), loaded)
    assert isinstance(cfg, DictConfig)
    return cfg


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """Runs as one row each: run_id, run_name, status, start_time, params.*, metrics.*, tags.*
    (the columns of ``mlflow.search_runs``, without its global tracking URI)."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "start_time": r.info.start_time,
        }
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)
