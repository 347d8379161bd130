"""Everything MLflow: the store, run names, params, tags, metrics and artifacts of a job.

This is the only module that talks to MLflow for a job; training knows nothing about it.
Runs are written with :class:`mlflow.MlflowClient` (explicit run ids, no global active-run
state, so sweep callbacks and jobs in other processes can nest runs by id).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import hydra
import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig, OmegaConf

from pipeline.config import PROJECT_ROOT, UNTRACKED_KEYS, Config, schema
from pipeline.train import History
from pipeline.views import (
    EXPERIMENT_KIND_TAG,
    TRAINING_KIND,
    mark_training_experiment,
    view_metrics,
    view_params,
)

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


def with_retry(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, retried while SQLite is locked by another process of the
    same sweep (MLflow raises TEMPORARILY_UNAVAILABLE: "database is locked")."""
    locked = ErrorCode.Name(TEMPORARILY_UNAVAILABLE)
    attempts = 20
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except MlflowException as exc:
            busy = exc.error_code == locked or "database is locked" in str(exc)
            if not busy or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


@functools.cache
def get_client(uri: str) -> mlflow.MlflowClient:
    """One client per store and process (creating one costs ~20 ms)."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri)


_EXPERIMENTS: dict[tuple[str, str], str] = {}  # (uri, name) -> id: one lookup per process


def ensure_experiment(client: mlflow.MlflowClient, name: str, uri: str) -> str:
    """Id of the experiment ``name``, created (with artifacts beside the store) if missing."""
    if (uri, name) in _EXPERIMENTS:
        return _EXPERIMENTS[uri, name]
    exp = with_retry(client.get_experiment_by_name, name)
    if exp is not None:
        exp_id = str(exp.experiment_id)
        with_retry(mark_training_experiment, client, exp)  # one made before the tag existed
    else:
        try:
            exp_id = str(
                client.create_experiment(
                    name,
                    artifact_location=artifact_root(uri),
                    tags={EXPERIMENT_KIND_TAG: TRAINING_KIND},  # the UI's training view
                )
            )
        except MlflowException:  # another process created it first
            exp = with_retry(client.get_experiment_by_name, name)
            if exp is None:
                raise
            exp_id = str(exp.experiment_id)
    _EXPERIMENTS[uri, name] = exp_id
    return exp_id


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


@functools.cache
def schema_defaults() -> dict[str, Any]:
    return flatten(to_container(schema()))


def run_name(cfg: DictConfig) -> str:
    """Short, readable and distinct within a sweep: the always-interesting keys, plus every
    other key that differs from the schema default."""
    if cfg.tracking.run_name:
        return str(cfg.tracking.run_name)
    loss = cfg.loss.name.value + ("-sum" if cfg.loss.reduction.value == "sum" else "")
    parts = [cfg.model.name.value, loss, f"lr{cfg.optim.lr:g}", f"bs{cfg.train.batch_size}"]
    defaults = schema_defaults()
    shown = {"model.name", "loss.name", "loss.reduction", "optim.lr", "train.batch_size", "seed"}
    short = {
        "data.n": "n",
        "train.epochs": "ep",
        "init.name": "",
        "data.outliers.fraction": "out",
        "train.drop_last": "droplast",
        "loss.delta": "d",
        "data.noise": "noise",
    }
    for key, value in flatten(to_container(cfg)).items():
        if key in shown or key.split(".")[0] in UNTRACKED_KEYS or defaults.get(key) == value:
            continue
        label = short.get(key, key.rsplit(".", 1)[-1])
        parts.append(
            label
            if value is True
            else f"{label}{value:g}"
            if isinstance(value, float)
            else f"{label}{value}"
        )
    parts.append(f"s{cfg.seed}")
    return "-".join(parts)


@dataclass(frozen=True)
class GitState:
    commit: str  # HEAD, or "unknown" outside a git checkout
    dirty: bool  # uncommitted changes to tracked files
    diff: str  # `git diff HEAD` when dirty


@functools.cache
def git_state() -> GitState:
    """The code version, read once per process (the code does not change under a job)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        return GitState(commit, dirty, git("diff", "HEAD") if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return GitState("unknown", False, "")


# Tags that say which code and packages produced a run: a rerun warns when they differ.
VERSION_TAGS = (
    "git_commit",
    "git_dirty",
    "python_version",
    "torch_version",
    "numpy_version",
    "mlflow_version",
    "hydra_version",
)


def version_tags() -> dict[str, str]:
    git = git_state()
    return {
        "git_commit": git.commit,
        "git_dirty": str(git.dirty).lower(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "mlflow_version": mlflow.__version__,
        "hydra_version": hydra.__version__,
    }


def run_tags(cfg: DictConfig) -> dict[str, str]:
    tags = {
        "model": cfg.model.name.value,
        "loss": cfg.loss.name.value,
        "reduction": cfg.loss.reduction.value,
        "config_hash": config_hash(cfg),
        "sweep": cfg.sweep.name,
        **version_tags(),
        # what makes a CPU run bit-reproducible: explicit generators seeded from `seed`,
        # deterministic kernels, and the same thread count (it can change reduction order)
        "deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "torch_num_threads": str(torch.get_num_threads()),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "mlflow.source.name": "pipeline",
        "mlflow.source.git.commit": git_state().commit,
    }
    if cfg.tracking.parent_run_id:  # explicit, so nesting holds for jobs in other processes
        tags[MLFLOW_PARENT_RUN_ID] = cfg.tracking.parent_run_id
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
    finals = {
        "ols_w_error": hist.ols_w_error,
        "ols_b_error": hist.ols_b_error,
        "b_hat": hist.b_hat,
        "updates": float(hist.updates),
    }
    # no dots in metric names: the UI's search box reads `w_hat.0` as an invalid clause
    finals.update({f"w_hat_{i}": v for i, v in enumerate(hist.w_hat)})
    if hist.diverged_at_step is not None:
        finals["diverged_at_step"] = float(hist.diverged_at_step)
    for key, value in finals.items():
        out += metric(key, value, 0)
    return out


# --- one run ----------------------------------------------------------------------------------


class RunLogger:
    """Opens the run of one job, logs it in a few batched calls (tags at creation; params,
    metrics and tags in one log_batch; artifacts in one upload), and always closes it:
    FINISHED (diverged or not), FAILED with the error as a tag, or KILLED on Ctrl-C/SIGTERM."""

    def __init__(
        self,
        cfg: DictConfig,
        overrides: list[str] | None = None,
        extra_tags: dict[str, str] | None = None,
    ):
        self.cfg, self.uri = cfg, tracking_uri(cfg)
        self.tree = to_container(cfg)  # the resolved config, once
        self.extra_tags = extra_tags or {}
        self.client = get_client(self.uri)
        self.experiment_id = ensure_experiment(self.client, cfg.tracking.experiment, self.uri)
        self.overrides = overrides or []
        self.run_id: str | None = None

    def start(self) -> str:
        run = with_retry(
            self.client.create_run,
            self.experiment_id,
            run_name=run_name(self.cfg),
            tags={**run_tags(self.cfg), **self.extra_tags},
        )
        self.run_id = run.info.run_id
        return self.run_id

    def finish(self, hist: History) -> None:
        metrics = history_metrics(hist, int(time.time() * 1000))
        self._close(RunStatus.FINISHED, metrics, {"diverged": str(hist.diverged).lower()})

    def fail(self, exc: BaseException) -> None:
        if self.run_id is None:
            return
        if isinstance(exc, KeyboardInterrupt):
            self._close(RunStatus.KILLED, [], {"error": "interrupted"})
        else:
            self._close(RunStatus.FAILED, [], {"error": repr(exc)[:5000]})

    def artifacts(self) -> dict[str, str]:
        """File name -> text of every artifact of the run."""
        files = {
            "config.yaml": OmegaConf.to_yaml(OmegaConf.create(self.tree)),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(self.overrides)),
        }
        if git_state().dirty:
            files["git.diff"] = git_state().diff
        return files

    def _close(self, status: int, metrics: list[Metric], tags: dict[str, str]) -> None:
        run_id = self.run_id
        assert run_id is not None
        params = [Param(k, str(v)) for k, v in flatten(self.tree).items()]
        params += view_params(self.cfg)
        metrics = [*metrics, *view_metrics(self.cfg, int(time.time() * 1000))]
        run_tags_ = [RunTag(k, v) for k, v in tags.items()]
        with_retry(self.client.log_batch, run_id, metrics=metrics, params=params, tags=run_tags_)
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in self.artifacts().items():
                (Path(tmp) / name).write_text(text)
            with_retry(self.client.log_artifacts, run_id, tmp)
        with_retry(self.client.set_terminated, run_id, RunStatus.to_string(status))


def load_run_config(client: mlflow.MlflowClient, run_id: str) -> DictConfig:
    """The resolved config a run logged (its config.yaml artifact), typed by the schema."""
    with tempfile.TemporaryDirectory() as tmp:
        loaded = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tmp))
    cfg = OmegaConf.merge(OmegaConf.structured(Config), loaded)
    assert isinstance(cfg, DictConfig)
    return cfg


def latest_sweep(client: mlflow.MlflowClient, experiment: str = "linreg") -> Run | None:
    """The newest sweep parent run of the experiment, if any."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.sweep_parent = 'true'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None
