"""Where a job's runs go and the sweep it belongs to: light on purpose (no MLflow, no torch).

The command line, the sweeper's planning and Hydra's callbacks need these before anything is
trained or written, and ``--help``, ``--cfg job``, a bad input and a fully cached sweep must
not pay for importing torch (~1 s) or MLflow (~1 s) to get them. The MLflow layer itself is
:mod:`pipeline.tracking`, which re-exports all of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.config import PROJECT_ROOT

DEFAULT_STORE = PROJECT_ROOT / "mlruns" / "mlflow.db"


def tracking_uri(cfg: DictConfig | None = None) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else the project's SQLite store."""
    explicit = cfg.tracking.uri if cfg is not None else None
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"


def is_server(uri: str) -> bool:
    """A tracking server (``make server``, or any MLflow server), not a local store."""
    return uri.startswith(("http://", "https://"))


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database file, whatever the cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None  # a server or other store decides for itself


class StoreError(RuntimeError):
    """The tracking store cannot be used (malformed URI, corrupted database, ...): one line
    naming the store and what to do."""


# URI schemes of MLflow tracking stores this pipeline accepts (the file store is deprecated
# by MLflow 3; a scheme-less path would silently become one)
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
HINT = "set tracking.uri or $MLFLOW_TRACKING_URI to sqlite:///<dir>/mlflow.db or http://host:port"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def store_lock_path(uri: str, name: str) -> Path | None:
    """A lock file next to a SQLite database (None for other stores)."""
    db = sqlite_path(uri)
    return None if db is None else db.with_name(f"{db.name}.{name}.lock")


@dataclass(frozen=True)
class SweepContext:
    """Runtime state a sweep hands its jobs: not configuration, so it travels in the job's
    environment (Hydra's ``hydra.job.env_set``, set in whichever process runs the job) and
    never in its overrides, params or config hash."""

    parent_run_id: str  # the sweep's MLflow parent run
    total: int  # jobs the sweep launches (progress lines)
    started: float  # the sweep's start time (progress lines)
    owner: str = ""  # the sweep's main process (ProcessId): workers end when it is gone

    ENV = {
        "parent_run_id": "LINREG_PARENT_RUN_ID",
        "total": "LINREG_SWEEP_TOTAL",
        "started": "LINREG_SWEEP_STARTED",
        "owner": "LINREG_SWEEP_OWNER",
    }

    def hydra_overrides(self) -> list[str]:
        return [f"+hydra.job.env_set.{var}={getattr(self, k)}" for k, var in self.ENV.items()]

    @classmethod
    def from_env(cls, env: Any = None) -> SweepContext | None:
        env = os.environ if env is None else env
        if cls.ENV["parent_run_id"] not in env:
            return None
        return cls(
            env[cls.ENV["parent_run_id"]],
            int(env[cls.ENV["total"]]),
            float(env[cls.ENV["started"]]),
            str(env.get(cls.ENV["owner"], "")),
        )
