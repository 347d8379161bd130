"""Sweeps: the ``grids`` sweeper (private implementation) and the sweep callback.

A preset in ``conf/sweep/`` names one or more *grids*; each grid is a basic-sweeper parameter
dict whose cartesian product is taken, and the sweep runs the union of the grids (so ``faq``
is just every preset at once). Before anything is written the sweeper composes every job,
validates it and hashes it; jobs whose ``config_hash`` already has a FINISHED run are skipped
(cached), so an interrupted sweep resumes where it stopped. A re-run of a sweep whose code,
config files and jobs are unchanged skips that planning: the hashes are the ones its parent run
recorded (``jobs.json``, found by the ``plan_key`` tag). The sweep owns one MLflow parent
run; every job it launches gets an explicit ``mlflow.parentRunId`` tag, whichever process runs
it. The summary is read back from MLflow, not from the launcher's memory.

Light at import (no MLflow, pandas or torch at the top): Hydra instantiates the callback for
every run, so a bad input or ``--cfg job`` must not pay for them; a fully cached sweep loads
MLflow to look its jobs up, and never torch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import PROJECT_ROOT, ConfigError, validate
from pipeline.context import StoreError, SweepContext, tracking_uri
from pipeline.engines import resolve_engine
from pipeline.identity import config_hash
from pipeline.procs import ProcessId, signals_as_interrupt, watch_owner
from pipeline.progress import ProgressView, outcome_of, record
from pipeline.server import TrackingUnreachable, check_tracking_reachable

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

    from pipeline.tracking import ParentRun

log = logging.getLogger("pipeline.sweep")


@dataclass
class Job:
    grid: str  # the preset grid it came from ("cli" for plain command-line sweeps)
    overrides: list[str]  # Hydra overrides that compose it
    config_hash: str  # what identifies its result (pipeline.tracking.config_hash)
    cached_run: str | None = None  # id of an existing FINISHED run with the same hash


# --- the sweeper ------------------------------------------------------------------------------


def as_override_value(value: Any) -> str:
    """A grid value as override text; a ``${...}`` interpolation is quoted: it is one value,
    resolved in each job's own config."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"'{text}'" if text.startswith("${") else text


def expand(
    grids: dict[str, dict[str, Any]],
    arguments: list[str],
    config_loader: Any = None,
    seeds: int | None = None,
) -> list[tuple[str, list[str]]]:
    """(grid, overrides) of every job: each grid's product (as Hydra's basic sweeper takes
    it) times the command line's own sweeps; with no grids, just the command line's. With
    ``seeds``, a grid that sets no seed (nor does the command line) runs seeds 0..seeds-1."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=config_loader)
    jobs = []
    for name, params in (grids or {"cli": {}}).items():
        lines = [f"{k}={as_override_value(v)}" for k, v in params.items()] + list(arguments)
        if seeds and not any(line.lstrip("+~").startswith("seed=") for line in lines):
            lines.append(f"seed=range(0,{seeds})")
        for batch in BasicSweeper.split_arguments(parser.parse_overrides(lines), None):
            jobs += [(name, list(overrides)) for overrides in batch]
    return jobs


def is_group_override(loader: Any, override: Any) -> bool:
    """Does the override pick a config group option (model=scratch, hydra/launcher=joblib)?"""
    key = override.key_or_group
    return bool(override.is_hydra_override()) or bool(loader.repository.group_exists(key))


def task_config(full: DictConfig) -> DictConfig:
    """A job's config as its task function sees it: Hydra's own key removed (as run_job does)."""
    cfg = copy.deepcopy(full)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


class JobComposer:
    """A job's task config from its overrides, as the launcher would compose it.

    A full Hydra composition costs ~0.2 s. Only overrides that pick a config group change the
    defaults list, so compose once per distinct set of group choices and apply the plain
    key=value overrides to a copy, as Hydra itself does after composing. The copy is unpickled
    from the composition pickled once: a third of a deepcopy's time, the same config (values,
    types, flags)."""

    def __init__(self, loader: Any, master_config: DictConfig):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.loader, self.master_config = loader, master_config
        self.parser = OverridesParser.create(config_loader=loader)
        self.composed: dict[tuple[str, ...], bytes] = {}
        self.planned: dict[tuple[str, ...], DictConfig] = {}
        self.parsed: dict[str, tuple[Any, bool]] = {}

    _shared: dict[tuple[int, int], JobComposer] = {}

    @classmethod
    def shared(cls, loader: Any, master_config: DictConfig) -> JobComposer:
        """One composer per sweep, so that the sweeper's planning and the stacked launcher
        share the compositions (the same loader and master config objects)."""
        key = (id(loader), id(master_config))
        if key not in cls._shared:
            cls._shared = {key: cls(loader, master_config)}  # keep only the current sweep's
        return cls._shared[key]

    @staticmethod
    def task_overrides(overrides: Sequence[str]) -> list[str]:
        """The job's own overrides, without the ones a sweep adds to Hydra's node."""
        return [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]

    def parse(self, line: str) -> tuple[Any, bool]:
        """(parsed override, picks a group?) of one override string, parsed once: Hydra's
        parser costs milliseconds and a sweep repeats the same strings in many jobs."""
        if line not in self.parsed:
            (override,) = self.parser.parse_overrides([line])
            self.parsed[line] = (override, is_group_override(self.loader, override))
        return self.parsed[line]

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        parsed = [self.parse(line) for line in overrides]
        groups = tuple(str(o.input_line) for o, is_group in parsed if is_group)
        if groups not in self.composed:
            full = self.loader.load_sweep_config(self.master_config, list(groups))
            self.composed[groups] = pickle.dumps(task_config(full))
        cfg = pickle.loads(self.composed[groups])
        ConfigLoaderImpl._apply_overrides_to_config([o for o, g in parsed if not g], cfg)
        return cfg

    def keep(self, overrides: Sequence[str], cfg: DictConfig) -> None:
        """Hold a job's config, composed while planning, for the launcher (compose once)."""
        self.planned[tuple(overrides)] = cfg

    def take(self, overrides: Sequence[str]) -> tuple[DictConfig, bool]:
        """The config the plan composed for these overrides (handed over, not copied; True:
        planned, so validated and its engine settled), or a fresh composition (False) for a
        launcher used without the grids sweeper."""
        cfg = self.planned.pop(tuple(overrides), None)
        return (cfg, True) if cfg is not None else (self(overrides), False)


class GridsSweeperImpl(Sweeper):
    def __init__(
        self,
        grids: dict[str, dict[str, Any]] | None = None,
        max_batch_size: int | None = None,
        seeds: int | None = None,
    ) -> None:
        self.grids = {k: dict(v) for k, v in (grids or {}).items()}
        self.max_batch_size = max_batch_size
        self.seeds = seeds
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        # Hydra resolved the grids when it instantiated us, against the sweep's base config:
        # take them raw so that a derived value (``${scaled:0.03,${train.batch_size},1,-1}``)
        # is resolved in each job's own config instead.
        raw = OmegaConf.to_container(config.hydra.sweeper.grids, resolve=False)
        assert isinstance(raw, dict)
        self.grids = {str(k): dict(v) for k, v in raw.items()}
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- planning: expand, compose, validate, hash, look up the cache

    @property
    def stacking(self) -> bool:
        """Does the launcher train stacked groups? (``train.engine=auto`` resolves by it.)"""
        # the plugin classes are thin wrappers over their `_impl`-style `launcher` attribute
        impl = getattr(self.launcher, "launcher", self.launcher)
        return bool(getattr(impl, "stacks_jobs", False))

    def cells(self, arguments: list[str]) -> list[tuple[str, list[str]]]:
        """(grid, overrides) of every job of the sweep."""
        assert self.hydra_context is not None
        return expand(self.grids, arguments, self.hydra_context.config_loader, self.seeds)

    def plan(
        self, arguments: list[str], cells: list[tuple[str, list[str]]] | None = None
    ) -> list[Job]:
        """Compose, validate, settle the engine and hash every job before anything is written."""
        assert self.hydra_context is not None and self.config is not None
        compose = JobComposer.shared(self.hydra_context.config_loader, self.config)
        jobs = []
        for grid, overrides in self.cells(arguments) if cells is None else cells:
            try:
                cfg = compose(overrides)
                validate(cfg)
                resolve_engine(cfg, self.stacking)
            except (ConfigError, ConfigCompositionException, OmegaConfBaseException) as exc:
                line = str(exc).strip().splitlines()[0]
                print(f"error: {line} (job: {' '.join(overrides)})", file=sys.stderr)
                raise SystemExit(2) from None
            jobs.append(Job(grid, overrides, config_hash(cfg)))
            compose.keep(overrides, cfg)
        return jobs

    def plan_key(self, cells: list[tuple[str, list[str]]]) -> str | None:
        """What the plan of these jobs depends on, hashed: the code (pipeline/), every config
        file Hydra can read (its file search path), the sweep's base config as resolved, the
        library versions, the launcher's stacking and the jobs' overrides. Equal keys, equal
        plans. None when the base config does not resolve on its own (then plan in full)."""
        import hydra
        import omegaconf

        assert self.hydra_context is not None and self.config is not None
        digest = hashlib.sha256()
        for text in (hydra.__version__, omegaconf.__version__, str(self.stacking)):
            digest.update(text.encode() + b"\0")
        roots = [PROJECT_ROOT / "pipeline"] + [
            Path(source.path)
            for source in self.hydra_context.config_loader.get_sources()
            if source.scheme() == "file"
        ]
        for root in roots:
            for path in sorted(root.rglob("*")):
                if path.suffix in (".py", ".yaml", ".yml") and path.is_file():
                    digest.update(str(path.relative_to(root)).encode() + b"\0")
                    digest.update(path.read_bytes())
        try:
            base = OmegaConf.to_container(task_config(self.config), resolve=True)
        except OmegaConfBaseException:
            return None
        digest.update(json.dumps([base, cells], sort_keys=True, default=str).encode())
        return digest.hexdigest()[:16]

    def planned_before(
        self, uri: str, exp_id: str | None, cells: list[tuple[str, list[str]]], key: str
    ) -> tuple[list[Job], str] | None:
        """The jobs as an earlier sweep with this plan key planned them (the ``jobs.json`` of
        its parent run) and that parent's id, or None if there is none or it does not cover
        every job."""
        from mlflow.exceptions import MlflowException

        from pipeline import queries

        if exp_id is None:
            return None
        found = queries.newest_run(uri, exp_id, f"tags.plan_key = '{key}'")
        if found is None:
            return None
        try:
            planned = json.loads(queries.artifact_text(uri, found.info.run_id, "jobs.json"))
            hashes = {tuple(j["overrides"]): str(j["config_hash"]) for j in planned}
            jobs = [Job(grid, overrides, hashes[tuple(overrides)]) for grid, overrides in cells]
            return jobs, found.info.run_id
        except (MlflowException, OSError, ValueError, KeyError, TypeError):
            return None  # no readable jobs.json, or not these jobs: plan in full

    # -- running

    def sweep_dir(self) -> Path:
        assert self.config is not None
        return Path(self.config.hydra.sweep.dir)

    def save_multirun_yaml(self) -> None:
        """The sweep dir and its ``multirun.yaml``, as Hydra's basic sweeper writes them."""
        assert self.config is not None
        self.sweep_dir().mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir() / "multirun.yaml")

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Plan, wait for an identical sweep if one runs, launch what is not cached, summarize.
        Returns one list of JobReturns per batch, as Hydra's basic sweeper does. SIGTERM or
        Ctrl-C close the parent run KILLED (the launchers close their open runs)."""
        from pipeline import queries
        from pipeline.store import ensure_experiment
        from pipeline.tracking import sweep_lock

        assert self.config is not None and self.launcher is not None
        t0 = time.time()
        cfg = self.config
        uri = tracking_uri(cfg)
        cells = self.cells(list(arguments))
        key = self.plan_key(cells)
        before = None
        if key is not None:  # reads only: nothing is written before the plan is validated
            known = queries.experiment_id(uri, cfg.tracking.experiment)
            before = self.planned_before(uri, known, cells, key)
        jobs, previous = before if before else (self.plan(list(arguments), cells), None)
        self.save_multirun_yaml()
        exp_id = ensure_experiment(uri, cfg.tracking.experiment)

        since = [t0]  # what this sweep may count as done even under sweep.force

        def waiting(holder: str) -> None:
            who, _, when = holder.partition(" ")
            with contextlib.suppress(ValueError):
                since[0] = min(since[0], float(when))  # what it trains counts as ours
            print(
                f"another sweep of the same jobs is running on this store ({who}); "
                "waiting for it to finish, then only what it left is run",
                file=sys.stderr,
                flush=True,
            )

        with signals_as_interrupt(), sweep_lock(uri, exp_id, sweep_hash_of(jobs), waiting):
            return self.run_locked(uri, exp_id, jobs, arguments, t0, since[0], key, previous)

    def run_locked(
        self,
        uri: str,
        exp_id: str,
        jobs: list[Job],
        arguments: list[str],
        t0: float,
        since: float,
        plan_key: str | None = None,
        previous: str | None = None,
    ) -> list[Sequence[JobReturn]]:
        """The sweep, holding its lock. ``since``: with ``sweep.force``, runs started since
        then (by this sweep, or by the identical one it waited for) are not retrained.
        ``previous``: the parent run of an earlier sweep of the same plan, whose runs are
        looked up first."""
        from mlflow.entities import RunStatus

        from pipeline import queries
        from pipeline.tracking import close_orphans

        assert self.config is not None and self.launcher is not None
        cfg = self.config
        wanted = {j.config_hash for j in jobs}
        own = None if cfg.sweep.force else previous
        finished = queries.finished_by_hash(uri, exp_id, wanted, own)
        if cfg.sweep.force:  # retrain, except what an identical sweep we waited for just did
            finished = {h: r for h, r in finished.items() if r.info.start_time >= since * 1000}
        unique: dict[str, Job] = {}
        for job in jobs:
            run = finished.get(job.config_hash)
            job.cached_run = run.info.run_id if run else None
            unique.setdefault(job.config_hash, job)
        todo = [j for j in unique.values() if j.cached_run is None]
        parent = open_parent(uri, exp_id, cfg, jobs, arguments, started=since, plan_key=plan_key)
        log.info(
            f"sweep '{cfg.sweep.name}': {len(unique)} jobs ({len(jobs)} grid cells), "
            f"{len(unique) - len(todo)} cached, {len(todo)} to run; parent run "
            f"{parent.run_id}"
        )
        owner = str(ProcessId.current())
        context = SweepContext(parent.run_id, len(todo), t0, owner)
        extra = context.hydra_overrides()
        # an extended sweep in a fixed hydra.sweep.dir continues the job numbering, so the
        # job dirs of earlier runs are not overwritten
        first = next_job_num(self.sweep_dir())
        results: list[Sequence[JobReturn]] = []
        view = ProgressView(self.sweep_dir(), context, cfg.sweep.name, len(unique) - len(todo))
        try:
            with view if todo else contextlib.nullcontext():
                size = self.max_batch_size or max(len(todo), 1)
                for start in range(0, len(todo), size):
                    batch = [j.overrides + extra for j in todo[start : start + size]]
                    results.append(self.launcher.launch(batch, initial_job_idx=first + start))
        except BaseException as exc:
            killed = isinstance(exc, KeyboardInterrupt)
            close_orphans(uri, exp_id, parent.run_id)
            parent.close(
                RunStatus.KILLED if killed else RunStatus.FAILED,
                time.time() - t0,
                error="interrupted" if killed else repr(exc),
            )
            raise
        finally:
            for f in self.sweep_dir().glob(".progress-*"):
                f.unlink(missing_ok=True)
        if close_orphans(uri, exp_id, parent.run_id):
            log.warning("closed the runs that dead workers left RUNNING (marked KILLED)")
        flat = [r for batch in results for r in batch]
        for job, ret in zip(todo, flat, strict=True):
            if ret.status == JobStatus.FAILED:
                log.error(f"job failed: {' '.join(job.overrides)}: {ret._return_value!r}")
        cached = {j.config_hash: finished[j.config_hash] for j in unique.values() if j.cached_run}
        summary = summarize(uri, parent, list(unique.values()), todo, time.time() - t0, cached)
        summary.drop(columns=["run_id"]).to_csv(self.sweep_dir() / "summary.csv", index=False)
        failed = (summary["status"][~summary["cached"]] == "failed").any()
        if cfg.sweep.report and not failed:
            from pipeline.digest import print_findings

            # the report is a function of the sweep's runs: when this invocation ran none and
            # the parent holds a complete report, building it again would repeat it
            if not todo and "report/answers.json" in queries.artifact_names(
                uri, parent.run_id, "report"
            ):
                print("report: unchanged (every job was cached); `make report` builds it again")
            else:
                from pipeline.report import build_report  # matplotlib & co only when asked

                build_report(parent.run_id, uri=uri)
            run = queries.get_run(uri, parent.run_id)
            assert run is not None
            print_findings(uri, run)
        if failed:
            raise SystemExit(1)
        return results


def next_job_num(sweep_dir: Path) -> int:
    """One past the highest numbered job dir already in the sweep dir (0 if none)."""
    nums = [int(p.name) for p in sweep_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(nums, default=-1) + 1


def sweep_hash_of(jobs: list[Job]) -> str:
    """What identifies a sweep: the hash of its set of config hashes."""
    hashes = sorted({j.config_hash for j in jobs})
    return hashlib.sha256(",".join(hashes).encode()).hexdigest()[:16]


def open_parent(
    uri: str,
    exp_id: str,
    cfg: DictConfig,
    jobs: list[Job],
    arguments: list[str],
    started: float = 0.0,
    plan_key: str | None = None,
) -> ParentRun:
    """The sweep's parent run: the one of an earlier run of the same set of jobs (resume), or
    a new one. With ``sweep.force`` only a parent created since this sweep ``started`` (by an
    identical sweep it waited for) is reused. ``plan_key``: see ``GridsSweeperImpl.plan_key``."""
    from pipeline import queries
    from pipeline.tracking import ParentRun

    hashes = sorted({j.config_hash for j in jobs})
    sweep_hash = sweep_hash_of(jobs)
    previous = queries.search_all(uri, exp_id, f"tags.sweep_hash = '{sweep_hash}'")
    if cfg.sweep.force:
        previous = [r for r in previous if r.info.start_time >= started * 1000]
    newest = max(previous, key=lambda r: r.info.start_time) if previous else None
    return ParentRun.open(
        uri,
        exp_id,
        sweep_hash,
        preset=cfg.sweep.name,
        launcher=str(OmegaConf.select(cfg, "hydra.launcher._target_", default="?")),
        params={
            "preset": cfg.sweep.name,
            "overrides": " ".join(arguments)[:6000],
            "n_jobs": str(len(hashes)),
        },
        jobs=[
            {"grid": j.grid, "config_hash": j.config_hash, "overrides": j.overrides} for j in jobs
        ],
        reuse=newest.info.run_id if newest else None,
        plan_key=plan_key,
        jobs_logged=newest is not None and newest.data.tags.get("plan_key") == plan_key,
    )


def summarize(
    uri: str,
    parent: ParentRun,
    jobs: list[Job],
    ran: list[Job],
    wall: float,
    cached_runs: dict[str, Run] | None = None,
) -> pd.DataFrame:
    """Print the counts per grid, log the table of every job's run; close the parent. Read back
    from MLflow, not from the launcher's memory: the runs this sweep ran from the parent's
    children, the cached ones as the cache lookup read them (``cached_runs``, by hash)."""
    import pandas as pd
    from mlflow.entities import RunStatus

    from pipeline import queries

    found: dict[str | None, Run] = {}
    if ran:
        parent_run = queries.get_run(uri, parent.run_id)
        assert parent_run is not None
        # a resumed parent may hold an older failed attempt of the same config: newest wins
        found = {r.data.tags.get("config_hash"): r for r in queries.children(uri, parent_run)}
    ran_hashes = {j.config_hash for j in ran}
    rows: list[dict[str, Any]] = []
    for job in jobs:
        cached = job.config_hash not in ran_hashes
        if not cached:
            run = found.get(job.config_hash)
        elif cached_runs is not None and job.config_hash in cached_runs:
            run = cached_runs[job.config_hash]
        else:
            run = queries.get_run(uri, job.cached_run) if job.cached_run else None
        rows.append(row_of(job, run, cached))
    df = pd.DataFrame(rows)
    n = outcome_counts(df)
    # one line per grid (a preset's question), then the whole; the run table is `make runs`
    for grid, g in df.groupby("grid", sort=False):
        print(f"  {grid}: {counts_text(outcome_counts(g))}")
    print(f"sweep: {counts_text(n)} in {wall:.1f}s; parent run {parent.run_id}")
    parent.log_summary(n, df.to_csv(index=False))
    parent.close(RunStatus.FAILED if n["failed"] else RunStatus.FINISHED, wall)
    return df


def outcome_counts(df: pd.DataFrame) -> dict[str, int]:
    """Jobs run by this invocation per outcome (finished, diverged, failed), and the cached
    ones (whatever their outcome)."""
    counts = df.loc[~df["cached"], "status"].value_counts().to_dict()
    n = {k: int(counts.get(k, 0)) for k in ("finished", "diverged", "failed")}
    n["cached"] = int(df["cached"].sum())
    return n


def counts_text(n: dict[str, int]) -> str:
    runs = sum(n.values())
    return (
        f"{runs} runs: {n['finished']} finished, {n['diverged']} diverged, {n['failed']} failed, "
        f"{n['cached']} cached"
    )


def row_of(job: Job, run: Run | None, cached: bool) -> dict[str, Any]:
    if run is None or run.info.status != "FINISHED":
        status = "failed"
    else:
        status = "diverged" if run.data.tags.get("diverged") == "true" else "finished"
    metrics = run.data.metrics if run else {}
    return {
        "grid": job.grid,
        "run": run.info.run_name if run else "-",
        "status": status,
        "cached": cached,
        "mse": metrics.get("mse"),
        "w_error": metrics.get("w_error"),
        "run_id": run.info.run_id if run else None,
    }


def sweep_context(job_overrides: Sequence[Sequence[str]]) -> SweepContext | None:
    """The sweep context that the sweeper put in a batch's ``hydra.job.env_set`` overrides
    (for launchers that run jobs without Hydra's run_job, which would set the environment)."""
    if not job_overrides:
        return None
    prefix = "+hydra.job.env_set."
    env = dict(
        o.removeprefix(prefix).split("=", 1) for o in job_overrides[0] if o.startswith(prefix)
    )
    return SweepContext.from_env(env)


# --- the callback -----------------------------------------------------------------------------


class SweepCallback(Callback):
    """Hydra callback of every sweep: prepares the store before any worker starts, closes
    stale runs, ends a worker process whose sweep is gone, and counts each job's outcome for
    the sweep's progress view (:mod:`pipeline.progress`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Parallel workers that all find a fresh SQLite file would all run MLflow's schema
        # migration at once and can corrupt it: create store and experiment here, first.
        from pipeline.store import ensure_experiment
        from pipeline.tracking import mark_stale_runs

        uri = tracking_uri(config)
        fail_fast_if_unreachable(uri)
        try:
            exp_id = ensure_experiment(uri, config.tracking.experiment)
        except StoreError as exc:  # Hydra would turn it into a warning and go on
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        stale = mark_stale_runs(uri, exp_id)
        if stale:
            log.warning(f"marked {stale} stale RUNNING run(s) KILLED (their process is gone)")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # runs in whichever process runs the job: a joblib worker watches the sweep's main
        # process and ends itself (its open run closed KILLED) when that process is gone
        context = SweepContext.from_env(config.hydra.job.env_set)
        owner = ProcessId.parse(context.owner) if context and context.owner else None
        if owner is not None:
            watch_owner(owner)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # in whichever process ran the job: counted for the sweep's progress view
        context = SweepContext.from_env(config.hydra.job.env_set)
        if context is None:
            return
        ok = job_return.status == JobStatus.COMPLETED
        record(config.hydra.sweep.dir, context, [outcome_of(ok, job_return._return_value)])


def fail_fast_if_unreachable(uri: str) -> None:
    """A dead tracking server: one line and exit 1 before any job, instead of every job
    retrying for minutes and the sweep turning each failure into a warning."""
    try:
        check_tracking_reachable(uri)
    except TrackingUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
