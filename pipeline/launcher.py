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
import time
from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from pipeline.config import register_configs
from pipeline.context import SweepContext
from pipeline.procs import signals_as_interrupt
from pipeline.sweep import JobComposer, count_progress, sweep_context, timing

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
        t0 = time.time()
        context, overrides, cfgs, groups = stacked_batch(
            self.hydra_context, self.config, job_overrides
        )
        log.info(f"Stacked launcher: {len(cfgs)} jobs in {len(groups)} groups")
        returns: list[JobReturn | None] = [None] * len(cfgs)
        local = context or SweepContext("", len(cfgs), t0)
        done = 0
        with signals_as_interrupt():  # SIGTERM: the open run closes KILLED, then the parent
            for g, idx in enumerate(groups, 1):
                group = run_group([cfgs[i] for i in idx], [overrides[i] for i in idx], context)
                for i, ret in zip(idx, group, strict=True):
                    returns[i] = ret
                if context is not None:
                    done = count_progress(self.config.hydra.sweep.dir, context, len(idx))
                else:
                    done += len(idx)
                print(
                    f"[{self.config.sweep.name}] group {g}/{len(groups)}: {len(idx)} jobs | "
                    f"done {done}/{local.total} | {timing(local, done)}",
                    flush=True,
                )
        assert all(r is not None for r in returns)
        return returns  # type: ignore[return-value]
