"""Jobs: validate a config, train it with its engine, and log it as one run.

The Hydra app and the basic/joblib launchers come through :func:`run_job` (one config, trained
by the model's d2l code unless ``train.engine=stacked``); the stacked launchers come through
:func:`run_group` (configs that share a schedule, trained as one computation, each logged as
its own run with the same contract).

Imported only where jobs train (the app once a config is valid, a launcher when it launches):
it loads torch and MLflow, which ``--help``, a bad input and a fully cached sweep never need.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence

import torch
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from pipeline.config import RESOLVERS, register_configs, validate
from pipeline.context import SweepContext
from pipeline.engines import resolve_engine
from pipeline.memory import peak_rss
from pipeline.procs import signals_as_interrupt
from pipeline.tracking import RunLogger
from pipeline.train import History, train

log = logging.getLogger("pipeline")


def print_epoch(epoch: int, m: dict[str, float]) -> None:
    loss = m["train_loss"]
    shown = f"{loss:f}" if abs(loss) < 1e4 else f"{loss:.3e}"  # d2l prints {:f}
    val = f", val mse {m['val_mse']:.3g}" if "val_mse" in m else ""
    log.info(
        f"epoch {epoch}, loss {shown}, mse {m['mse']:.3g}{val}, "
        f"w error {m['w_error']:.3g}, b error {m['b_error']:.3g}"
    )


def prepare(cfg: DictConfig, stacking: bool) -> None:
    """Validate (ConfigError, before any run exists) and settle the engine, in place."""
    if not all(OmegaConf.has_resolver(name) for name in RESOLVERS):
        register_configs()  # resolvers, for jobs unpickled in a launcher's worker process
    validate(cfg)
    resolve_engine(cfg, stacking)


def deterministic_torch() -> None:
    """Deterministic kernels (the CPU kernels here are: make it a guarantee), set before a
    run is tagged with it, in whichever process trains."""
    if not torch.are_deterministic_algorithms_enabled():
        # What torch.use_deterministic_algorithms(True) does for eager code, without the
        # import of torch._inductor (and sympy) it makes to set torch.compile's flag too:
        # ~70 MB of RSS in every job, for a compiler this project never runs.
        torch._C._set_deterministic_algorithms(True)


def timed_train(
    cfgs: Sequence[DictConfig], verbose: bool
) -> tuple[list[History], dict[str, float]]:
    """Train configs of one schedule (:func:`pipeline.train.train`) in whichever process runs
    them; the Histories, and what the computation cost this machine: ``train_time_s`` (wall
    time), ``peak_rss_mb`` and ``rss_start_mb`` (the process's RSS high-water mark while it
    ran, reset at its start, and the RSS it started from; see ``pipeline.memory``)."""
    deterministic_torch()
    with peak_rss() as rss:
        t0 = time.perf_counter()
        hists = train(cfgs, on_epoch=print_epoch if verbose else None)
        seconds = time.perf_counter() - t0
    return hists, {"train_time_s": seconds, **rss.metrics()}


def run_job(
    cfg: DictConfig, overrides: list[str] | None = None, tags: dict[str, str] | None = None
) -> float:
    """Train ``cfg`` and log it as one MLflow run; returns the final full-data MSE (inf when
    the run diverged). Raises ConfigError, before any run exists, for a bad config."""
    prepare(cfg, stacking=False)
    deterministic_torch()
    context = SweepContext.from_env()  # a sweep prints one progress line per job instead
    with signals_as_interrupt(), RunLogger(cfg, overrides, tags, context) as run:
        if context is None:
            log.info(f"mlflow run {run.run_id} ({run.uri})")
        (hist,), cost = timed_train([cfg], verbose=context is None)
        run.finish(hist, **cost)
    if hist.diverged:
        log.warning(
            f"WARNING: diverged ({hist.outcome_reason}; optim.lr={cfg.optim.lr}); "
            f"run {run.run_id} is tagged outcome=diverged"
        )
    return hist.final_mse


def run_group(
    cfgs: Sequence[DictConfig],
    overrides: Sequence[Sequence[str]],
    context: SweepContext | None,
    tags: dict[str, str] | None = None,
    only: int | None = None,
) -> list[JobReturn]:
    """Train prepared configs that share one schedule and engine (see
    ``pipeline.train.group_by_schedule``) as one computation, then log each as its own run
    (``only``: just that one, for a rerun). A failure to train fails every job of the group; a
    failure to log fails its own job. The runs of one computation share a ``stack_id`` tag, so
    a rerun can train the same group again and get the same bits."""
    returns = [JobReturn(overrides=list(o), cfg=c) for c, o in zip(cfgs, overrides, strict=True)]
    stack = {"stack_size": str(len(cfgs)), "stack_id": uuid.uuid4().hex, **(tags or {})}
    with signals_as_interrupt():  # SIGTERM: the open run closes KILLED
        try:
            hists, cost = timed_train(cfgs, verbose=False)
            failure: Exception | None = None
        except Exception as exc:  # the group's one computation failed: every job of it failed
            failure = exc
        for k, (cfg, ret) in enumerate(zip(cfgs, returns, strict=True)):
            if only is not None and k != only:
                continue
            try:
                with RunLogger(cfg, list(ret.overrides or []), stack, context) as run:
                    if failure is not None:
                        raise failure
                    run.finish(hists[k], **cost)
                ret.return_value, ret.status = hists[k].final_mse, JobStatus.COMPLETED
            except Exception as exc:
                ret.return_value, ret.status = exc, JobStatus.FAILED
    return returns if only is None else [returns[only]]
