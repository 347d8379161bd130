"""The MLflow layer: where runs are written. Reads go through :mod:`pipeline.queries`.

Every write of the project comes through here, on the store of :mod:`pipeline.store`
(client, experiment, SQLite settings): one job's run (:class:`RunLogger`, a context manager)
and a sweep's parent run
(:class:`ParentRun`). The store's URI and the sweep context that jobs in other processes need
(:class:`SweepContext`) live in the light :mod:`pipeline.context` and are re-exported here.
Runs are written with an explicit :class:`mlflow.MlflowClient` (explicit run ids, no global
active-run state, so jobs in other processes can nest runs by id).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import hydra
import mlflow
import numpy as np
import yaml
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig

from pipeline.config import PROJECT_ROOT
from pipeline.context import DEFAULT_STORE as DEFAULT_STORE
from pipeline.context import (
    SweepContext,
    store_lock_path,
    tracking_uri,
)
from pipeline.engines import engine_of
from pipeline.identity import cell_name, config_hash, flatten, run_name, to_container
from pipeline.outcome import DIVERGED
from pipeline.procs import ProcessId, deferred_interrupts, file_lock
from pipeline.store import ensure_experiment, get_client
from pipeline.views import (
    save_runs_view,
    view_metrics,
    view_params,
)

if TYPE_CHECKING:
    from pipeline.train import History

# --- what a run records -------------------------------------------------------------------------


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
    import torch  # a run is tagged after it trained: torch is loaded by then

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


def to_yaml(tree: Any) -> str:
    """A plain tree as YAML (libyaml's dumper when built in: ~10x OmegaConf.to_yaml's speed)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(tree, Dumper=dumper, sort_keys=False, allow_unicode=True)


def run_tags(
    cfg: DictConfig, parent_run_id: str | None, tree: dict[str, Any] | None = None
) -> dict[str, str]:
    """The tags a run is created with (``tree``: ``to_container(cfg)``, if already made)."""
    import torch

    from pipeline.train import TRAIN_THREADS

    tags = {
        "model": cfg.model.name.value,
        "loss": cfg.loss.name.value,
        "reduction": cfg.loss.reduction.value,
        "engine": engine_of(cfg),  # the code that trained it: scratch, linear or stacked
        "config_hash": config_hash(cfg, tree),
        "cell": cell_name(cfg, tree),  # the config without its seed: the UI groups by it
        "sweep": cfg.sweep.name,
        **version_tags(),
        # what makes a CPU run bit-reproducible: explicit generators seeded from `seed`,
        # deterministic kernels, and the same thread count (it can change reduction order)
        "deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "torch_num_threads": str(TRAIN_THREADS),
        **ProcessId.current().tags(),  # liveness: host, pid, pid start time
        "mlflow.source.name": "pipeline",
        "mlflow.source.git.commit": git_state().commit,
    }
    if parent_run_id:  # explicit, so nesting holds for jobs in other processes
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    return tags


# Metrics that measure the machine, not the computation (wall time, memory): a rerun or another
# launcher trains the same numbers but never the same values of these.
MACHINE_METRICS = frozenset({"train_time_s", "peak_rss_mb", "rss_start_mb"})


def history_metrics(hist: History, now_ms: int) -> list[Metric]:
    """Every number of a History as MLflow metrics; nan/inf are dropped, never logged."""

    def metric(key: str, value: float, step: int) -> Iterable[Metric]:
        if math.isfinite(value):
            yield Metric(key, value, now_ms, step)

    out: list[Metric] = []
    for key, values in hist.epochs.items():
        for epoch, value in zip(hist.epoch_ids, values, strict=True):
            out += metric(key, value, epoch)
    curves = {
        "batch_loss": hist.batch_loss,
        "grad_norm": hist.grad_norm,
        "grad_norm_w": hist.grad_norm_w,
        "grad_norm_b": hist.grad_norm_b,
        **hist.probes,
    }
    for key, values in curves.items():
        for step, value in zip(hist.steps, values, strict=True):
            out += metric(key, value, step)
    finals = {
        "ols_w_error": hist.ols_w_error,
        "ols_b_error": hist.ols_b_error,
        "ols_mse": hist.ols_mse,
        "ols_val_mse": hist.ols_val_mse,  # nan (not logged) without a held-out set
        "b_hat": hist.b_hat,
        "updates": float(hist.updates),
        "data_mb": hist.data_mb,
    }
    # no dots in metric names: the UI's search box reads `w_hat.0` as an invalid clause
    finals.update({f"w_hat_{i}": v for i, v in enumerate(hist.w_hat)})
    if hist.diverged_at_step is not None:
        finals["diverged_at_step"] = float(hist.diverged_at_step)
    if math.isfinite(hist.last_iterate_w_error):
        finals["last_iterate_w_error"] = hist.last_iterate_w_error
    for key, value in finals.items():
        out += metric(key, value, 0)
    return out


def outcome_tags(outcome: str, reason: str) -> dict[str, str]:
    """How a run ended (pipeline.outcome), and ``diverged`` as before: the same verdict."""
    return {
        "outcome": outcome,
        "outcome_reason": reason[:5000],
        "diverged": str(outcome == DIVERGED).lower(),
    }


def tag_outcomes(uri: str, tags: dict[str, dict[str, str]]) -> None:
    """Write tags on existing runs (run id -> tags): the report's back-fill of the outcome
    of runs logged before it existed, one batch per run."""
    client = get_client(uri)
    for run_id, run_tags_ in tags.items():
        with deferred_interrupts():
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags_.items()])


# --- one run ------------------------------------------------------------------------------------


class RunLogger:
    """The MLflow run of one job, as a context manager::

        with RunLogger(cfg, overrides) as run:
            run.finish(train_one(cfg))

    It opens the run on entry (tags at creation, then the config artifacts) and always closes it
    on exit: FINISHED with every param, metric and tag in one ``log_batch`` (diverged or not),
    FAILED with the error as a tag, or KILLED on Ctrl-C/SIGTERM. Four writes a run: MLflow's
    floor (create, one batch, terminate) and one artifact upload."""

    def __init__(
        self,
        cfg: DictConfig,
        overrides: list[str] | None = None,
        extra_tags: dict[str, str] | None = None,
        context: SweepContext | None = None,
    ):
        self.cfg, self.uri = cfg, tracking_uri(cfg)
        self.tree = to_container(cfg)  # resolved once: tags, name, params and artifact use it
        self.overrides = overrides or []
        self.extra_tags = extra_tags or {}
        self.context = context
        self.client = get_client(self.uri)
        self.experiment_id = ensure_experiment(self.uri, cfg.tracking.experiment)
        self.run_id = ""
        self._closed = False
        self._hist: History | None = None
        self._extra_metrics: dict[str, float] = {}

    def __enter__(self) -> RunLogger:
        parent = self.context.parent_run_id if self.context else None
        with deferred_interrupts():  # a signal meanwhile: raised once the run exists
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name(self.cfg, self.tree),
                tags={**run_tags(self.cfg, parent, self.tree), **self.extra_tags},
            )
            self.run_id = run.info.run_id
        try:
            # now, while the run holds only its tags: MLflow reads the run back to find where
            # its artifacts go, which costs more once it holds hundreds of metrics
            with tempfile.TemporaryDirectory() as tmp, deferred_interrupts():
                for name, text in self.artifacts().items():
                    (Path(tmp) / name).write_text(text)
                self.client.log_artifacts(self.run_id, tmp)
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def finish(self, hist: History, **metrics: float) -> None:
        """What the job measured; logged when the block exits without an error."""
        self._hist, self._extra_metrics = hist, metrics

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                if self._hist is None:
                    self._close(RunStatus.FAILED, [], {"error": "the job logged no history"})
                    return
                now = int(time.time() * 1000)
                metrics = history_metrics(self._hist, now)
                metrics += [Metric(k, v, now, 0) for k, v in self._extra_metrics.items()]
                tags = outcome_tags(self._hist.outcome, self._hist.outcome_reason)
                if self._hist.update_error is not None:
                    tags["update_error"] = self._hist.update_error[:5000]
                self._close(RunStatus.FINISHED, metrics, tags)
            elif isinstance(exc, KeyboardInterrupt):
                self._close(RunStatus.KILLED, [], {"error": "interrupted"})
            else:
                self._close(RunStatus.FAILED, [], {"error": repr(exc)[:5000]})
        except KeyboardInterrupt:
            # a signal while closing: the store writes are never cut in half (a signal inside
            # one is raised when it ends), so the run is either closed as logged or still open
            if not self._closed:
                killed = RunStatus.to_string(RunStatus.KILLED)
                try:
                    with deferred_interrupts():
                        self.client.set_terminated(self.run_id, killed)
                except Exception as exc:  # the interrupt, not this, is what the caller must see
                    print(f"warning: run {self.run_id} not closed: {exc}", file=sys.stderr)
            raise

    def artifacts(self) -> dict[str, str]:
        """File name -> text of every artifact of the run."""
        files = {"config.yaml": to_yaml(self.tree), "overrides.yaml": to_yaml(self.overrides)}
        if git_state().dirty:
            files["git.diff"] = git_state().diff
        return files

    def _close(self, status: int, metrics: list[Metric], tags: dict[str, str]) -> None:
        params = [Param(k, str(v)) for k, v in flatten(self.tree).items()]
        params += view_params(self.cfg)
        metrics = [*metrics, *view_metrics(self.cfg, int(time.time() * 1000))]
        run_tags_ = [RunTag(k, v) for k, v in tags.items()]
        with deferred_interrupts():
            self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=run_tags_)
            self.client.set_terminated(self.run_id, RunStatus.to_string(status))
            self._closed = True


# --- a sweep's parent run -----------------------------------------------------------------------


class ParentRun:
    """The MLflow parent run of one sweep, identified by the hash of its set of jobs: a re-run
    of the same sweep reopens it, so an interrupted sweep finishes under one run."""

    def __init__(self, uri: str, experiment_id: str, run_id: str):
        self.client, self.experiment_id, self.run_id = get_client(uri), experiment_id, run_id

    @classmethod
    @deferred_interrupts()  # its writes: a signal meanwhile is raised once they are done
    def open(
        cls,
        uri: str,
        experiment_id: str,
        sweep_hash: str,
        preset: str,
        launcher: str,
        params: dict[str, str],
        jobs: list[dict[str, Any]],
        reuse: str | None,
        plan_key: str | None = None,
        jobs_logged: bool = False,
    ) -> ParentRun:
        """Reopen the run ``reuse`` (RUNNING again, tagged resumed) or create a new one. Its
        ``jobs.json`` and ``plan_key`` tag let a re-run of the same plan skip planning
        (``jobs_logged``: the reopened run's ``jobs.json`` is this plan's already)."""
        client = get_client(uri)
        liveness = ProcessId.current().tags()
        # the plan_key tag is written after the jobs.json it vouches for
        keyed = [RunTag("plan_key", plan_key)] if plan_key else []
        if reuse:
            client.update_run(reuse, status="RUNNING")
            if not jobs_logged:  # the same jobs, reached by other overrides or other code
                client.log_text(reuse, json.dumps(jobs, indent=1), "jobs.json")
            reopened = [RunTag("resumed", "true"), *(RunTag(*kv) for kv in liveness.items())]
            client.log_batch(reuse, tags=reopened + keyed)
            return cls(uri, experiment_id, reuse)
        tags = {
            "sweep_hash": sweep_hash,
            "sweep": preset,
            "sweep_parent": "true",
            "launcher": launcher,
            **liveness,
        }
        name = f"sweep-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        client.log_text(run_id, json.dumps(jobs, indent=1), "jobs.json")
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()], tags=keyed)
        save_runs_view(client, experiment_id, run_id)  # what views.runs_view_url opens
        return cls(uri, experiment_id, run_id)

    @deferred_interrupts()
    def log_summary(self, counts: dict[str, int], summary_csv: str) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(f"n_{k}", float(v), now, 0) for k, v in counts.items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.log_text(self.run_id, summary_csv, "summary.csv")

    @deferred_interrupts()
    def close(self, status: int, wall: float, error: str | None = None) -> None:
        tags = [RunTag("error", error[:5000])] if error else []
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric("wall_time_s", wall, now, 0)], tags=tags)
        self.client.set_terminated(self.run_id, RunStatus.to_string(status))


def mark_stale_runs(uri: str, experiment_id: str) -> int:
    """RUNNING runs started on this host by a process that is gone (SIGKILL, power loss) are
    marked KILLED: MLflow has no heartbeat, so nothing else would ever close them. A process
    is its host, pid and start time (tags ``host``, ``pid``, ``pid_start``), so a pid reused by
    another process does not keep a dead run alive."""
    from pipeline.queries import search_all

    client = get_client(uri)
    stale = 0
    for run in search_all(uri, experiment_id, "attributes.status = 'RUNNING'"):
        owner = ProcessId.from_tags(run.data.tags)
        if owner is None or owner.alive() is not False:
            continue  # alive, another host's, or not ours to judge
        rid = run.info.run_id
        with deferred_interrupts():
            client.set_tag(rid, "error", "stale: its process is gone")
            client.set_terminated(rid, "KILLED")
        stale += 1
    return stale


def close_orphans(uri: str, experiment_id: str, parent_run_id: str) -> int:
    """Once the launcher has returned, no job of the sweep is running: a child still RUNNING
    was left by a worker that died (a Ray worker killed mid-job, whose task Ray re-ran or
    gave up). Mark it KILLED, wherever it ran (mark_stale_runs only sees this host)."""
    from pipeline.queries import search_all

    client = get_client(uri)
    orphans = search_all(
        uri,
        experiment_id,
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in orphans:
        with deferred_interrupts():
            client.set_tag(run.info.run_id, "error", "orphan: its worker died before it ended")
            client.set_terminated(run.info.run_id, "KILLED")
    return len(orphans)


# --- one sweep at a time ------------------------------------------------------------------------


@contextlib.contextmanager
def sweep_lock(
    uri: str, experiment_id: str, sweep_hash: str, on_wait: Callable[[str], None]
) -> Iterator[None]:
    """Held while a sweep of this set of jobs runs on this store, so that an identical sweep
    started meanwhile waits (``on_wait(holder)`` is called once) and then finds every job
    cached, instead of training them twice. Different sweeps do not wait for each other.

    SQLite: an ``flock`` on a file next to the database (released by the kernel when the
    process dies). ``on_wait`` gets the holder as ``host:pid:start since`` (since: when it
    took the lock, epoch seconds). Other stores (a tracking server): a claim, the experiment tag
    ``sweep_claim.<hash>`` set to this process and read back after a second; a claim whose
    process is gone (same host) is taken over."""
    me = f"{ProcessId.current()} {time.time():.3f}"  # who holds it, since when
    path = sweep_lock_path(uri, sweep_hash)
    if path is not None:
        with file_lock(path, on_wait, note=me):
            yield
        return
    client, key, waited = get_client(uri), f"sweep_claim.{sweep_hash}", False
    nonce = f"{me} {os.urandom(4).hex()}"  # me: the holder text on_wait gets

    def holder() -> str:
        return str(client.get_experiment(experiment_id).tags.get(key, ""))

    while True:
        current = holder()
        owner = ProcessId.parse(current.split(" ")[0]) if current else None
        if owner is not None and owner.alive() is not False:
            if not waited:
                on_wait(" ".join(current.split(" ")[:2]))
                waited = True
            time.sleep(CLAIM_POLL_S)
            continue
        client.set_experiment_tag(experiment_id, key, nonce)
        time.sleep(CLAIM_SETTLE_S)  # a concurrent claimer's write lands in this window
        if holder() == nonce:
            break
    try:
        yield
    finally:
        if holder() == nonce:
            client.set_experiment_tag(experiment_id, key, "")


def sweep_lock_path(uri: str, sweep_hash: str) -> Path | None:
    """The lock file of a sweep on a SQLite store; None: a claim on the store."""
    return store_lock_path(uri, f"sweep-{sweep_hash}")


CLAIM_SETTLE_S = 1.0  # between writing a claim and reading it back
CLAIM_POLL_S = 2.0  # how often a waiting sweep looks at a held claim
