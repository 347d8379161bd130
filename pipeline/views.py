"""What the MLflow UI opens on: the training runs view of one sweep, with the columns a user
compares, and the few extra params and metrics that make runs searchable and sortable there.

Names and formats here are the installed MLflow UI's (3.x, read from its JS bundle):
- the experiment tag ``mlflow.experimentKind``: without it MLflow 3 opens an experiment in
  its GenAI view (traces, evaluations); ``custom_model_development`` is its "Machine
  learning" kind, whose default tab is the runs table.
- a *shared view state*: an experiment tag ``mlflow.sharedViewState.<key>`` holding the runs
  view's state as JSON (search filter, sort, selected columns), opened by
  ``#/experiments/<id>/runs?viewStateShareKey=<key>``. It is the UI's own "Share" link; the
  plain ``searchFilter`` URL parameter can filter but cannot choose columns. The state keeps
  the UI's ``groupBy`` (its list of UI-state keys a shared view restores includes it):
  ``{"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "cell"}]}``
  is the *Group by* menu's "tag: cell" with its default aggregate, the mean; ``groupsExpanded``
  maps a group id, ``tag.cell.<value>``, to false for a collapsed group (a missing id is
  expanded). A state too long for a tag (20000 characters) is stored as the UI stores its
  own: ``deflate;`` and the base64 of the zlib-deflated JSON.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable
from typing import Any

import mlflow
from mlflow.entities import Experiment, Metric, Param
from omegaconf import DictConfig

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."

# MLflow params are strings (a search compares them as text, the table sorts "10" < "3"):
# these config values are also logged as metrics, so `metrics.lr > 0.1` and sorting work.
CONFIG_METRICS = {
    "lr": "optim.lr",
    "batch_size": "train.batch_size",
    "seed": "seed",
    "n": "data.n",
    "epochs": "train.epochs",
    "delta": "loss.delta",
    "noise": "data.noise",
    "outlier_fraction": "data.outliers.fraction",
    "weight_decay": "optim.weight_decay",
}
# Short params for the choices, so a search reads `params.loss = "huber"` rather than
# params.`loss.name` (a dotted key needs backquotes in MLflow's search syntax).
CHOICE_PARAMS = {
    "model": "model.name",
    "loss": "loss.name",
    "reduction": "loss.reduction",
    "init": "init.name",
    "optim": "optim.name",
}

# The runs table's columns, in order (MLflow's canonical keys: type.`name`).
VIEW_COLUMNS = [
    "metrics.`lr`",
    "metrics.`batch_size`",
    "params.`loss`",
    "params.`reduction`",
    "params.`model`",
    "metrics.`seed`",
    "metrics.`mse`",
    "metrics.`w_error`",
    "tags.`diverged`",
    "tags.`outcome`",
]
# the sweep's runs grouped by cell (the config without its seed): one row per cell, its
# metrics averaged over the seeds (pipeline.identity.cell_name)
GROUP_BY_CELL = {
    "aggregateFunction": "average",
    "groupByKeys": [{"mode": "tag", "groupByData": "cell"}],
}


def config_value(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return getattr(node, "value", node)  # enums as their strings


def view_params(cfg: DictConfig) -> list[Param]:
    return [Param(name, str(config_value(cfg, key))) for name, key in CHOICE_PARAMS.items()]


def view_metrics(cfg: DictConfig, now_ms: int) -> list[Metric]:
    return [
        Metric(name, float(config_value(cfg, key)), now_ms, 0)
        for name, key in CONFIG_METRICS.items()
    ]


def mark_training_experiment(client: mlflow.MlflowClient, experiment: Experiment) -> None:
    """Tag an experiment (new, or made before this tag existed) as a training experiment."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def sweep_filter(parent_run_id: str) -> str:
    return f"tags.`mlflow.parentRunId` = '{parent_run_id}'"


def view_key(parent_run_id: str, grouped: bool = False) -> str:
    return f"sweep-{parent_run_id}" + ("-cells" if grouped else "")


def runs_view_url(base: str, experiment_id: str, parent_run_id: str, grouped: bool = False) -> str:
    """The UI's training runs view of one sweep: its child runs, the compared columns, best
    mse first; ``grouped``: one row per cell, the seeds' mean. Needs :func:`save_runs_view`
    once per sweep (the sweep and `make ui` do it)."""
    key = view_key(parent_run_id, grouped)
    # workflowType: the UI's GenAI / Model training switch, stored per browser (GenAI by
    # default); the URL parameter sets it to the training side for this link.
    query = f"viewStateShareKey={key}&workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def encode_view(state: dict[str, Any]) -> str:
    """A shared view state as the tag's value: JSON, deflated when long (the UI's format)."""
    text = json.dumps(state)
    if len(text) <= PLAIN_VIEW_MAX:
        return text
    return "deflate;" + base64.b64encode(zlib.compress(text.encode(), 9)).decode()


PLAIN_VIEW_MAX = 4000  # characters; a longer state (many cells) is deflated


def save_runs_view(
    client: mlflow.MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    cells: Iterable[str] = (),
) -> None:
    """Store the views that :func:`runs_view_url` opens (the runs, and the runs grouped by
    cell), as experiment tags (idempotent). ``cells``: the sweep's cells, whose groups open
    collapsed (one row per cell); a cell not listed opens expanded."""
    state: dict[str, Any] = {
        "searchFilter": sweep_filter(parent_run_id),
        "orderByKey": "metrics.`mse`",
        "orderByAsc": True,
        "lifecycleFilter": "Active",
        "selectedColumns": VIEW_COLUMNS,
        "runsHiddenMode": "SHOW_ALL",
    }
    tag = SHARED_VIEW_PREFIX + view_key(parent_run_id)
    client.set_experiment_tag(experiment_id, tag, json.dumps(state))
    collapsed = {f"tag.cell.{cell}": False for cell in sorted(cells)}
    # by cell: the UI groups the runs it has loaded (pages of 100), so a page then holds
    # whole cells but for the one it ends in
    grouped = {
        **state,
        "orderByKey": "tags.`cell`",
        "groupBy": GROUP_BY_CELL,
        "groupsExpanded": collapsed,
    }
    tag = SHARED_VIEW_PREFIX + view_key(parent_run_id, grouped=True)
    client.set_experiment_tag(experiment_id, tag, encode_view(grouped))
