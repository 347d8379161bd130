"""Sweeps: the ``grids`` sweeper (private implementation) and the sweep callback.

A preset in ``conf/sweep/`` names one or more *grids*; each grid is a basic-sweeper parameter
dict whose cartesian product is taken, and the sweep runs the union of the grids (so ``faq``
is just every preset at once). Before anything is written the sweeper composes every job,
validates it and hashes it; jobs whose ``config_hash`` already has a FINISHED run are skipped
(cached), so an interrupted sweep resumes where it stopped. The sweep owns one MLflow parent
run; every job it launches gets an explicit ``mlflow.parentRunId`` tag, whichever process runs
it. The summary is read back from MLflow, not from the launcher's memory.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from mlflow.entities import Run, RunStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from pipeline import queries
from pipeline.config import ConfigError, validate
from pipeline.identity import config_hash
from pipeline.server import TrackingUnreachable, check_tracking_reachable
from pipeline.tracking import (
    ParentRun,
    SweepContext,
    close_orphans,
    ensure_experiment,
    mark_stale_runs,
    tracking_uri,
)
from pipeline.train import resolve_engine

log = logging.getLogger("pipeline.sweep")


@dataclass
class GridsSweeperConf:
    _target_: str = "hydra_plugins.linreg_sweep.GridsSweeper"
    # grid name -> {config key: comma-separated values, or one ${...} derived value};
    # the sweep is the union of the grids' cartesian products
    grids: dict[str, dict[str, Any]] = field(default_factory=dict)
    # jobs handed to the launcher at once; null = all of them
    max_batch_size: int | None = None
    # every grid that does not set `seed` itself runs seeds 0..seeds-1 (null: the config's seed)
    seeds: int | None = None


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
    key=value overrides to a copy, as Hydra itself does after composing."""

    def __init__(self, loader: Any, master_config: DictConfig):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.loader, self.master_config = loader, master_config
        self.parser = OverridesParser.create(config_loader=loader)
        self.composed: dict[tuple[str, ...], DictConfig] = {}
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
            self.composed[groups] = task_config(full)
        cfg = copy.deepcopy(self.composed[groups])
        ConfigLoaderImpl._apply_overrides_to_config([o for o, g in parsed if not g], cfg)
        return cfg

    def keep(self, overrides: Sequence[str], cfg: DictConfig) -> None:
        """Hold a job's config, composed while planning, for the launcher (compose once)."""
        self.planned[tuple(overrides)] = cfg

    def take(self, overrides: Sequence[str]) -> DictConfig:
        """The config the plan composed for these overrides (handed over, not copied), or a
        fresh composition for a launcher used without the grids sweeper."""
        return self.planned.pop(tuple(overrides), None) or self(overrides)


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

    def plan(self, arguments: list[str]) -> list[Job]:
        """Compose, validate, settle the engine and hash every job before anything is written."""
        assert self.hydra_context is not None and self.config is not None
        compose = JobComposer.shared(self.hydra_context.config_loader, self.config)
        jobs = []
        loader = self.hydra_context.config_loader
        for grid, overrides in expand(self.grids, arguments, loader, self.seeds):
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

    # -- running

    def save_multirun_yaml(self) -> None:
        """The sweep dir and its ``multirun.yaml``, as Hydra's basic sweeper writes them."""
        assert self.config is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        assert self.config is not None and self.launcher is not None
        t0 = time.time()
        jobs = self.plan(list(arguments))
        self.save_multirun_yaml()
        cfg = self.config
        uri = tracking_uri(cfg)
        exp_id = ensure_experiment(uri, cfg.tracking.experiment)
        finished = {} if cfg.sweep.force else queries.finished_by_hash(uri, exp_id)
        unique: dict[str, Job] = {}
        for job in jobs:
            run = finished.get(job.config_hash)
            job.cached_run = run.info.run_id if run else None
            unique.setdefault(job.config_hash, job)
        todo = [j for j in unique.values() if j.cached_run is None]
        parent = open_parent(uri, exp_id, cfg, jobs, arguments)
        log.info(
            f"sweep '{cfg.sweep.name}': {len(unique)} jobs ({len(jobs)} grid cells), "
            f"{len(unique) - len(todo)} cached, {len(todo)} to run; parent run "
            f"{parent.run_id}"
        )
        extra = SweepContext(parent.run_id, len(todo), t0).hydra_overrides()
        results: list[JobReturn] = []
        try:
            size = self.max_batch_size or max(len(todo), 1)
            for start in range(0, len(todo), size):
                batch = [j.overrides + extra for j in todo[start : start + size]]
                results += self.launcher.launch(batch, initial_job_idx=start)
        except BaseException as exc:
            close_orphans(uri, exp_id, parent.run_id)
            parent.close(
                RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED,
                time.time() - t0,
                error=repr(exc),
            )
            raise
        if close_orphans(uri, exp_id, parent.run_id):
            log.warning("closed the runs that dead workers left RUNNING (marked KILLED)")
        for job, ret in zip(todo, results, strict=True):
            if ret.status == JobStatus.FAILED:
                log.error(f"job failed: {' '.join(job.overrides)}: {ret._return_value!r}")
        summary = summarize(uri, parent, list(unique.values()), todo, time.time() - t0)
        failed = (summary["status"][~summary["cached"]] == "failed").any()
        if cfg.sweep.report and not failed:
            from pipeline.report import build_report  # matplotlib & co only when asked

            build_report(parent.run_id, uri=uri)
            print(f"report: logged to the parent run {parent.run_id} under report/")
        if failed:
            raise SystemExit(1)
        return results


def open_parent(
    uri: str, exp_id: str, cfg: DictConfig, jobs: list[Job], arguments: list[str]
) -> ParentRun:
    """The sweep's parent run: the one of an earlier run of the same set of jobs (resume), or
    a new one."""
    hashes = sorted({j.config_hash for j in jobs})
    sweep_hash = hashlib.sha256(",".join(hashes).encode()).hexdigest()[:16]
    previous = (
        []
        if cfg.sweep.force
        else queries.search_all(uri, exp_id, f"tags.sweep_hash = '{sweep_hash}'")
    )
    reuse = max(previous, key=lambda r: r.info.start_time).info.run_id if previous else None
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
        reuse=reuse,
    )


def summarize(
    uri: str, parent: ParentRun, jobs: list[Job], ran: list[Job], wall: float
) -> pd.DataFrame:
    """Print and log the table of every job's run and the counts; close the parent. Read back
    from MLflow, not from the launcher's memory."""
    parent_run = queries.get_run(uri, parent.run_id)
    assert parent_run is not None
    # a resumed parent may hold an older failed attempt of the same config: newest wins
    found = {r.data.tags.get("config_hash"): r for r in queries.children(uri, parent_run)}
    ran_hashes = {j.config_hash for j in ran}
    rows: list[dict[str, Any]] = []
    for job in jobs:
        cached = job.config_hash not in ran_hashes
        run = (
            queries.get_run(uri, job.cached_run)
            if cached and job.cached_run
            else found.get(job.config_hash)
        )
        rows.append(row_of(job, run, cached))
    df = pd.DataFrame(rows)
    counts = df.loc[~df["cached"], "status"].value_counts().to_dict()
    n = {k: int(counts.get(k, 0)) for k in ("finished", "diverged", "failed")}
    n["cached"] = int(df["cached"].sum())
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(df.drop(columns=["run_id"]).to_string(index=False))
    print(
        f"sweep: {len(df)} jobs: {n['finished']} finished, {n['diverged']} diverged, "
        f"{n['failed']} failed, {n['cached']} cached in {wall:.1f}s; "
        f"parent run {parent.run_id}"
    )
    parent.log_summary(n, df.to_csv(index=False))
    parent.close(RunStatus.FAILED if n["failed"] else RunStatus.FINISHED, wall)
    return df


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
    stale runs, and prints one progress line per job (readable in CI logs)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Parallel workers that all find a fresh SQLite file would all run MLflow's schema
        # migration at once and can corrupt it: create store and experiment here, first.
        uri = tracking_uri(config)
        fail_fast_if_unreachable(uri)
        exp_id = ensure_experiment(uri, config.tracking.experiment)
        stale = mark_stale_runs(uri, exp_id)
        if stale:
            log.warning(f"marked {stale} stale RUNNING run(s) KILLED (their process is gone)")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        context = SweepContext.from_env(config.hydra.job.env_set)
        if context is None:
            return
        done = config.hydra.job.num + 1
        elapsed = time.time() - context.started
        eta = elapsed / done * (context.total - done)
        ok = job_return.status == JobStatus.COMPLETED
        value = job_return._return_value
        result = f"mse {value:.3g}" if ok and isinstance(value, float) else "FAILED"
        print(
            f"[{config.sweep.name}] job {done}/{context.total} {result} | elapsed "
            f"{elapsed:.1f}s | ETA {eta:.0f}s",
            flush=True,
        )


def fail_fast_if_unreachable(uri: str) -> None:
    """A dead tracking server: one line and exit 1 before any job, instead of every job
    retrying for minutes and the sweep turning each failure into a warning."""
    try:
        check_tracking_reachable(uri)
    except TrackingUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
