"""Everything MLflow: the store, run names, params, tags, metrics and artifacts of a job.

This is the only module that talks to MLflow for a job; training knows nothing about it.
Runs are written with :class:`mlflow.MlflowClient` (explicit run ids, no global active-run
state, so sweep callbacks and jobs in other processes can nest runs by id).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig, OmegaConf

from pipeline.config import PROJECT_ROOT, UNTRACKED_KEYS, Config
from pipeline.train import History

DEFAULT_STORE = PROJECT_ROOT / "mlruns" / "mlflow.db"
T = TypeVar("T")


# --- the store --------------------------------------------------------------------------------


def tracking_uri(cfg: DictConfig | None = None) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else the project's SQLite store."""
    explicit = cfg.tracking.uri if cfg is not None else None
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database file, whatever the cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None  # a server or other store decides for itself


def with_retry(call: Callable[[], T], attempts: int = 20) -> T:
    """Retry a store call while SQLite is locked by another process of the same sweep."""
    locked = ErrorCode.Name(TEMPORARILY_UNAVAILABLE)
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as exc:
            busy = exc.error_code == locked or "database is locked" in str(exc)
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


def get_client(uri: str) -> mlflow.MlflowClient:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_experiment(client: mlflow.MlflowClient, name: str, uri: str) -> str:
    """Id of the experiment ``name``, created (with artifacts beside the store) if missing."""
    exp = with_retry(lambda: client.get_experiment_by_name(name))
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_root(uri)))
    except MlflowException:  # another process created it first
        exp = with_retry(lambda: client.get_experiment_by_name(name))
        if exp is None:
            raise
        return str(exp.experiment_id)


# --- what a run records -----------------------------------------------------------------------


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain resolved dict (enums as their strings), for hashing, params and the YAML artifact."""
    out = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.03}} -> {'optim.lr': 0.03}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_hash(cfg: DictConfig) -> str:
    """Stable hash of what determines the result: the config without tracking/sweep keys."""
    tree = {k: v for k, v in to_container(cfg).items() if k not in UNTRACKED_KEYS}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def run_name(cfg: DictConfig) -> str:
    """Short, readable and distinct within a sweep: the always-interesting keys, plus every
    other key that differs from the schema default."""
    if cfg.tracking.run_name:
        return str(cfg.tracking.run_name)
    loss = cfg.loss.name.value + ("-sum" if cfg.loss.reduction.value == "sum" else "")
    parts = [cfg.model.name.value, loss, f"lr{cfg.optim.lr:g}", f"bs{cfg.train.batch_size}"]
    defaults = flatten(to_container(OmegaConf.structured(Config)))
    shown = {"model.name", "loss.name", "loss.reduction", "optim.lr", "train.batch_size", "seed"}
    short = {"data.n": "n", "train.epochs": "ep", "init.name": "", "data.outliers.fraction": "out",
             "train.drop_last": "droplast", "loss.delta": "d", "data.noise": "noise"}
    for key, value in flatten(to_container(cfg)).items():
        if key in shown or key.split(".")[0] in UNTRACKED_KEYS or defaults.get(key) == value:
            continue
        label = short.get(key, key.rsplit(".", 1)[-1])
        parts.append(label if value is True else f"{label}{value:g}" if isinstance(
            value, float) else f"{label}{value}")
    parts.append(f"s{cfg.seed}")
    return "-".join(parts)


def run_tags(cfg: DictConfig, parent_run_id: str | None) -> dict[str, str]:
    tags = {
        "model": cfg.model.name.value,
        "loss": cfg.loss.name.value,
        "reduction": cfg.loss.reduction.value,
        "config_hash": config_hash(cfg),
        "sweep": cfg.sweep.name,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "mlflow_version": mlflow.__version__,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "mlflow.source.name": "pipeline",
    }
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    return tags


def history_metrics(hist: History, now_ms: int) -> list[Metric]:
    """Every number of a History as MLflow metrics; nan/inf are dropped, never logged."""

    def metric(key: str, value: float, step: int) -> Iterable[Metric]:
        if math.isfinite(value):
            yield Metric(key, value, now_ms, step)

    out: list[Metric] = []
    for key, values in hist.epochs.items():
        for epoch, value in enumerate(values):
            out += metric(key, value, epoch)
    for step, loss, norm in zip(hist.steps, hist.batch_loss, hist.grad_norm, strict=True):
        out += metric("batch_loss", loss, step)
        out += metric("grad_norm", norm, step)
    finals = {"ols_w_error": hist.ols_w_error, "ols_b_error": hist.ols_b_error,
              "b_hat": hist.b_hat, "updates": float(hist.updates)}
    finals.update({f"w_hat.{i}": v for i, v in enumerate(hist.w_hat)})
    if hist.diverged_at_step is not None:
        finals["diverged_at_step"] = float(hist.diverged_at_step)
    for key, value in finals.items():
        out += metric(key, value, 0)
    return out


# --- one run ----------------------------------------------------------------------------------


class RunLogger:
    """Opens the run of one job, logs its History in a few batched calls, and always closes
    it: FINISHED (diverged or not), FAILED with the error as a tag, or KILLED on Ctrl-C."""

    def __init__(self, cfg: DictConfig, parent_run_id: str | None = None,
                 overrides: list[str] | None = None):
        self.cfg, self.uri = cfg, tracking_uri(cfg)
        self.client = get_client(self.uri)
        self.experiment_id = ensure_experiment(self.client, cfg.tracking.experiment, self.uri)
        self.parent_run_id, self.overrides = parent_run_id, overrides or []
        self.run_id: str | None = None

    def start(self) -> str:
        tags = run_tags(self.cfg, self.parent_run_id)
        run = with_retry(lambda: self.client.create_run(
            self.experiment_id, run_name=run_name(self.cfg), tags=tags))
        self.run_id = run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in flatten(to_container(self.cfg)).items()]
        with_retry(lambda: self.client.log_batch(run_id, params=params))
        resolved = OmegaConf.to_yaml(OmegaConf.create(to_container(self.cfg)))
        with_retry(lambda: self.client.log_text(run_id, resolved, "config.yaml"))
        with_retry(lambda: self.client.log_text(
            run_id, OmegaConf.to_yaml(OmegaConf.create(self.overrides)), "overrides.yaml"))
        return run_id

    def finish(self, hist: History) -> None:
        assert self.run_id is not None
        run_id = self.run_id
        metrics = history_metrics(hist, int(time.time() * 1000))
        tags = [RunTag("diverged", str(hist.diverged).lower())]
        with_retry(lambda: self.client.log_batch(run_id, metrics=metrics, tags=tags))
        self._end(RunStatus.FINISHED)

    def fail(self, exc: BaseException) -> None:
        if self.run_id is None:
            return
        killed = isinstance(exc, KeyboardInterrupt)
        if not killed:
            run_id = self.run_id
            with_retry(lambda: self.client.set_tag(run_id, "error", repr(exc)[:5000]))
        self._end(RunStatus.KILLED if killed else RunStatus.FAILED)

    def _end(self, status: int) -> None:
        run_id = self.run_id
        assert run_id is not None
        with_retry(lambda: self.client.set_terminated(run_id, RunStatus.to_string(status)))
