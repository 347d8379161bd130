"""The tracking store: the one :class:`mlflow.MlflowClient` per URI, a new SQLite store made
from a migrated template, SQLite's settings on every connection, and experiments.

The lowest MLflow layer: :mod:`pipeline.queries` (every read) and :mod:`pipeline.tracking`
(every write) both stand on it, and it imports neither.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from sqlalchemy import event
from sqlalchemy.engine import Engine

from pipeline.context import DEFAULT_STORE as DEFAULT_STORE
from pipeline.context import (
    HINT,
    SCHEMES,
    StoreError,
    artifact_root,
    sqlite_path,
    store_lock_path,
)
from pipeline.procs import deferred_interrupts, file_lock
from pipeline.views import (
    EXPERIMENT_KIND_TAG,
    TRAINING_KIND,
    mark_training_experiment,
)

# MLflow draws a tqdm bar for each artifact download, and the report reads dozens: noise in a
# sweep's output, which has its own progress view (the variable set to true restores them)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# --- the store ----------------------------------------------------------------------------------


@event.listens_for(Engine, "connect")
def _sqlite_settings(dbapi_conn: Any, record: Any) -> None:
    """SQLite stores, set on every connection of MLflow's engine (SQLAlchemy's public hook):
    WAL lets readers and one writer work at once, ``synchronous=NORMAL`` is safe under WAL and
    saves an fsync per commit, and a 30 s busy timeout makes parallel workers wait for the
    lock instead of failing (SQLite's default is 5 s)."""
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA busy_timeout = 30000")
        dbapi_conn.execute("PRAGMA journal_mode = WAL")
        dbapi_conn.execute("PRAGMA synchronous = NORMAL")


def first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def check_sqlite_file(db: Path) -> None:
    """An existing database file must be SQLite (MLflow would retry a corrupted one for
    minutes before failing with a traceback)."""
    # Only through SQLite itself: closing a plain file descriptor of the database would drop
    # the POSIX locks that this process's open SQLite connections hold on it.
    if not db.exists() or db.stat().st_size == 0:
        return
    if db.is_dir():
        raise StoreError(f"tracking store {db} is a directory: {HINT}")
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        what = "is not a SQLite database" if "not a database" in str(exc) else "is corrupted"
        raise StoreError(f"tracking store {db} {what} ({exc}): move it away, or {HINT}") from None


def store_template() -> Path:
    """An empty, migrated SQLite store, kept in the user's cache, per MLflow version and working
    directory: MLflow writes the default experiment's artifact location (``<cwd>/mlruns/0``)
    into a new store, so a copy is exactly the store MLflow would have made here."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "linreg-sweep"
    where = hashlib.sha256(str(Path.cwd().resolve()).encode()).hexdigest()[:12]
    return cache / f"mlflow-{mlflow.__version__}-{where}-empty.db"


def copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy through SQLite's backup API (the write-ahead log included)."""
    with (
        contextlib.closing(sqlite3.connect(src)) as source,
        contextlib.closing(sqlite3.connect(dst)) as target,
    ):
        source.backup(target)


def open_new_store(uri: str, db: Path) -> mlflow.MlflowClient:
    """A new SQLite store. MLflow builds one by running its schema migrations (68 in MLflow
    3.17: about 2 s, more on a busy machine): that is done once per MLflow version, and the
    empty result kept as a template (:func:`store_template`) that later new stores copy."""
    template = store_template()
    if template.exists():
        try:
            copy_sqlite(template, db)
            client = mlflow.MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # MLflow checks the schema is current
            return client
        except Exception:  # a damaged template: rebuild both
            db.unlink(missing_ok=True)
            template.unlink(missing_ok=True)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)  # creates and migrates the schema
    with contextlib.suppress(OSError, sqlite3.Error):  # no cache: the next store migrates too
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        copy_sqlite(db, partial)
        os.replace(partial, template)  # atomic: a reader sees the whole template or none
    return client


@functools.cache
def get_client(uri: str) -> mlflow.MlflowClient:
    """One client per store and process (creating one costs ~20 ms). A SQLite store is
    created here (:func:`open_new_store`), under a file lock next to it, before anything else
    touches it (parallel first-time migrations race: ``duplicate column name``). Raises
    :class:`StoreError` (one line) for a store that cannot be used."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme not in SCHEMES or (scheme == "sqlite" and sqlite_path(uri) is None):
        raise StoreError(f"tracking URI {uri!r} is not a supported store: {HINT}")
    db = sqlite_path(uri)
    if db is None:
        return mlflow.MlflowClient(tracking_uri=uri)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or exc
        raise StoreError(f"tracking URI {uri!r}: cannot create {db.parent}: {why}") from None
    check_sqlite_file(db)
    lock = store_lock_path(uri, "schema")
    assert lock is not None
    try:
        with file_lock(lock):
            if not db.exists() or db.stat().st_size == 0:
                return open_new_store(uri, db)
            client = mlflow.MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # migrates a store of an older MLflow
    except Exception as exc:
        raise StoreError(
            f"tracking store {db} cannot be opened ({first_line(exc)}): is it an MLflow SQLite "
            f"database? Move it away, or {HINT}"
        ) from exc
    return client


_EXPERIMENTS: dict[tuple[str, str], str] = {}  # (uri, name) -> id: one lookup per process


def ensure_experiment(uri: str, name: str) -> str:
    """Id of the experiment ``name``, created (with artifacts beside the store) if missing."""
    if (uri, name) in _EXPERIMENTS:
        return _EXPERIMENTS[uri, name]
    client = get_client(uri)
    with deferred_interrupts():  # it may write: the experiment, or its kind tag
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            exp_id = str(exp.experiment_id)
            mark_training_experiment(client, exp)  # one made before the tag existed
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
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = str(exp.experiment_id)
    _EXPERIMENTS[uri, name] = exp_id
    return exp_id
