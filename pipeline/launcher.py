"""The stacked launcher (private implementation of ``hydra/launcher=stacked``).

It composes every job of a batch, groups the ones that share data and batch schedule, trains
each group as one stacked computation (:mod:`pipeline.stacked`) and logs every config as its
own run with exactly the contract of a sequential job. A group whose stacked training raises
falls back to running its jobs one by one, so a failure stays the failure of its own job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from pipeline.config import register_configs
from pipeline.job import log_trained, run_job
from pipeline.stacked import group_by_schedule, train_stacked
from pipeline.sweep import JobComposer

log = logging.getLogger("pipeline.launcher")


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.linreg_sweep.StackedLauncher"


def run_group(cfgs: list[DictConfig], overrides: list[list[str]]) -> list[JobReturn]:
    """Train one stacked group (configs that share data and batch schedule) and log each
    config as its own run; one JobReturn per config, in order. Called in-process by the
    stacked launcher and in a Ray task by the ``ray_stacked`` launcher."""
    try:
        hists: list[Any] = train_stacked(cfgs)
    except Exception as exc:  # e.g. a config the stacked path cannot take
        log.warning(f"stacked training failed ({exc!r}); running its jobs one by one")
        hists = [None] * len(cfgs)
    returns = []
    for cfg, job_overrides, hist in zip(cfgs, overrides, hists, strict=True):
        ret = JobReturn(overrides=job_overrides, cfg=cfg)
        try:
            ret.return_value = (
                run_job(cfg, job_overrides)
                if hist is None
                else log_trained(cfg, hist, job_overrides)
            )
            ret.status = JobStatus.COMPLETED
        except Exception as exc:
            ret.return_value, ret.status = exc, JobStatus.FAILED
        returns.append(ret)
    return returns


class StackedLauncherImpl(Launcher):
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
        assert self.hydra_context is not None and self.config is not None
        register_configs()
        t0 = time.time()
        compose = JobComposer.shared(self.hydra_context.config_loader, self.config)
        cfgs = [compose(overrides) for overrides in job_overrides]
        groups = group_by_schedule(cfgs)
        log.info(f"Stacked launcher: {len(cfgs)} jobs in {len(groups)} stacked groups")
        returns: list[JobReturn | None] = [None] * len(cfgs)
        done = 0
        for g, idx in enumerate(groups, 1):
            rets = run_group([cfgs[i] for i in idx], [list(job_overrides[i]) for i in idx])
            for i, ret in zip(idx, rets, strict=True):
                returns[i] = ret
            done += len(idx)
            elapsed = time.time() - t0
            name = self.config.sweep.name
            print(
                f"[{name}] group {g}/{len(groups)}: {len(idx)} jobs | done "
                f"{initial_job_idx + done}/{initial_job_idx + len(cfgs)} | elapsed "
                f"{elapsed:.1f}s | ETA {elapsed / done * (len(cfgs) - done):.0f}s",
                flush=True,
            )
        assert all(r is not None for r in returns)
        return returns  # type: ignore[return-value]
