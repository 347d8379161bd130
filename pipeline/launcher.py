"""The stacked launcher (private implementation of ``hydra/launcher=stacked``).

It takes every job of a batch as the sweeper composed it, settles each job's engine
(``train.engine=auto`` becomes ``stacked`` when the loss has a closed form), groups the stacked
jobs that share data and batch schedule, and trains each group as one computation
(:func:`pipeline.job.run_group`); a job whose engine is ``d2l`` trains alone with its model's
code. Every config is logged as its own run with the contract of a sequential job.

Unlike Hydra's basic launcher it writes no per-job ``.hydra/`` folder and calls no per-job
callbacks: a group is one computation, and the runs in MLflow carry each job's config and
overrides (artifacts ``config.yaml`` and ``overrides.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from pipeline.config import register_configs
from pipeline.context import SweepContext
from pipeline.procs import signals_as_interrupt
from pipeline.progress import outcome_of, record
from pipeline.sweep import JobComposer, sweep_context

log = logging.getLogger("pipeline.launcher")


def stacked_batch(
    hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]]
) -> tuple[SweepContext | None, list[list[str]], list[DictConfig], list[list[int]]]:
    """What every stacking launcher does first: the sweep context, each job's own overrides,
    its config (the plan's, composed once) with its engine settled, and the groups that train
    as one computation. (Imported here, not at the top: a sweep whose every job is cached
    sets this launcher up but never launches, and never loads torch or the job's code.)"""
    from pipeline.job import prepare
    from pipeline.train import group_by_schedule

    compose = JobComposer.shared(hydra_context.config_loader, config)
    context = sweep_context(job_overrides)
    overrides = [JobComposer.task_overrides(o) for o in job_overrides]
    cfgs = []
    for o in overrides:
        cfg, planned = compose.take(o)
        if not planned:  # the plan validated its configs and settled their engine already
            prepare(cfg, stacking=True)
        cfgs.append(cfg)
    return context, overrides, cfgs, group_by_schedule(cfgs)


def outcomes(returns: Sequence[JobReturn]) -> list[str]:
    """Each job's outcome for the sweep's progress (finished, diverged or failed)."""
    return [outcome_of(r.status == JobStatus.COMPLETED, r._return_value) for r in returns]


class StackedLauncherImpl(Launcher):
    stacks_jobs = True  # the sweeper resolves train.engine=auto to `stacked` for its jobs

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from pipeline.job import run_group

        assert self.hydra_context is not None and self.config is not None
        register_configs()
        context, overrides, cfgs, groups = stacked_batch(
            self.hydra_context, self.config, job_overrides
        )
        log.info(f"Stacked launcher: {len(cfgs)} jobs in {len(groups)} groups")
        returns: list[JobReturn | None] = [None] * len(cfgs)
        with signals_as_interrupt():  # SIGTERM: the open run closes KILLED, then the parent
            for idx in groups:
                group = run_group([cfgs[i] for i in idx], [overrides[i] for i in idx], context)
                for i, ret in zip(idx, group, strict=True):
                    returns[i] = ret
                if context is not None:  # the sweep's progress view shows it
                    record(self.config.hydra.sweep.dir, context, outcomes(group))
        assert all(r is not None for r in returns)
        return returns  # type: ignore[return-value]
