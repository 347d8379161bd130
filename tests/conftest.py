"""Shared fixtures: every test gets its own SQLite MLflow store in tmp_path (never mlruns/).

The store's schema migration costs seconds, so it runs once per test session into a template
file that each test copies; a Hydra composition costs ~0.1 s, so configs come from the sweeper's
``JobComposer``: one composition per set of config-group choices, copied.
"""

from __future__ import annotations

import functools
import gc
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from pipeline.__main__ import collect_less_often, exit_quickly
from pipeline.config import PROJECT_ROOT, register_configs
from pipeline.sweep import JobComposer

if TYPE_CHECKING:  # MLflow takes ~1.5 s to import: not in xdist's controller process
    import mlflow

CONF_DIR = str(PROJECT_ROOT / "conf")
register_configs()


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow SQLite store, made as the pipeline makes a new store
    (a copy of its cached template: the migration runs once per MLflow version)."""
    from pipeline.store import get_client

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    get_client(f"sqlite:///{db}")
    return db


@pytest.fixture(autouse=True)
def tracking_uri(tmp_path: Path, template_store: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at a fresh SQLite file for this test, through the standard variable."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    # SQLite's backup API: a consistent copy, the write-ahead log included
    with sqlite3.connect(template_store) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LINREG_OUTPUTS", str(tmp_path / "hydra"))
    return uri


@pytest.fixture
def client(tracking_uri: str) -> mlflow.MlflowClient:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


@functools.cache
def job_composer() -> JobComposer:
    """The sweeper's own composer over the real conf/ tree: one Hydra composition per set of
    group choices (model=, loss=, ...), the key=value overrides applied to an unpickled copy."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = compose(config_name="config", return_hydra_config=True)
    return JobComposer(loader, master)


def compose_cfg(*overrides: str) -> DictConfig:
    """The real conf/ tree, composed as a sweep composes its jobs, with the given overrides (a
    fresh object each call: jobs settle their engine in place)."""
    return job_composer()(overrides)


@pytest.fixture
def cfg() -> Callable[..., DictConfig]:
    return compose_cfg


# Files in the order xdist hands them out (--dist loadfile --no-loadscope-reorder): longest
# first, so the two workers finish together instead of one waiting on a late long file
# (measured with --durations on 2 workers; a file not listed goes last). The integration
# tests, one unit (see pytest_xdist_make_scheduler), go first: they are the longest.
LONGEST_FIRST = (
    "integration",
    "test_reliability.py",  # 35 s: the joblib sweep and the signal tests
    "test_answers_chapter.py",  # 22 s: one sweep of 130 runs
    "test_sweep.py",
    "test_answers.py",
    "test_rerun.py",
    "test_stacked.py",
    "test_train.py",
    "test_tracking.py",
    "test_optimizers.py",
    "test_report.py",
    "test_config.py",
    "test_theory.py",
    "test_streaming.py",
    "test_catalogue.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = "integration" if item.path.parent.name == "integration" else item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: a file's own order is kept


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown when xdist is not loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadfile, except that the integration tests are one unit, so one worker runs
    them all and the session's one PostgreSQL + mlflow server and one Ray head are started
    once (xdist's loadgroup would do it, but its group marks are lost under pytest 9)."""
    if config.getvalue("dist") != "loadfile":
        return None  # the mode asked for, by xdist's own hook
    from xdist.scheduler import LoadFileScheduling

    class LoadFileAndServices(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("tests/integration/"):
                return "tests/integration"
            return super()._split_scope(nodeid)

    return LoadFileAndServices(config, log)


# The test processes hold what a sweep's process holds (torch, MLflow, Hydra: ~3000 modules),
# so they get the command line's garbage-collector settings: collections every 50000
# allocations instead of 700, the imported modules frozen out of the collector's walks once
# collected, and a frozen heap at exit (the interpreter's last collections cost ~1 s a process).
def pytest_configure(config: pytest.Config) -> None:
    collect_less_often()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    exit_quickly()
