"""Shared fixtures: every test gets its own SQLite MLflow store in tmp_path (never mlruns/)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from pipeline.config import PROJECT_ROOT, register_configs

CONF_DIR = str(PROJECT_ROOT / "conf")
register_configs()


@pytest.fixture(autouse=True)
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at a fresh SQLite file for this test, through the standard variable."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LINREG_OUTPUTS", str(tmp_path / "hydra"))
    return uri


@pytest.fixture
def client(tracking_uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def compose_cfg(*overrides: str) -> DictConfig:
    """The real conf/ tree, composed as the app would, with the given overrides."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def cfg() -> Callable[..., DictConfig]:
    return compose_cfg
