"""Sweeps on a Ray cluster (private implementation of ``hydra/launcher=ray_stacked``, and the
callback that connects Hydra's own ``hydra/launcher=ray`` to the cluster).

- ``hydra/launcher=ray`` is Hydra's official plugin (``hydra-ray-launcher``): one Ray task per
  job, each running the job exactly as the basic launcher does. Its own ``ray.init`` would
  start a throwaway local Ray; :class:`RayInitCallback` connects first (it then reuses that
  connection) to the cluster named by ``$RAY_ADDRESS`` or recorded by ``make cluster``, and
  gives every worker the driver's ``MLFLOW_TRACKING_URI`` (and ``LINREG_*``) through the
  job's ``runtime_env``.
- ``hydra/launcher=ray_stacked`` sends each stacked group (:func:`pipeline.train.
  group_by_schedule`) to one Ray task running :func:`pipeline.job.run_group`, the same
  function the in-process stacked launcher calls: a cluster trains K configs per task.

Faults: a task whose worker dies is re-run by Ray (``max_retries``); a group task first
skips the configs that an earlier attempt already logged FINISHED under the sweep's parent,
so a retry never duplicates a run. A task lost for good becomes FAILED jobs (the sweep ends
with exit 1 and a second ``make sweep`` runs only what is missing). The sweep closes any child
left RUNNING by a dead worker (:func:`pipeline.tracking.close_orphans`).

Ray is imported only inside ``launch`` and the callback: never when Hydra scans plugins.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from pipeline.cluster import SINGLE_NODE_ENV, is_loopback, ray_init_kwargs
from pipeline.context import SweepContext

log = logging.getLogger("pipeline.ray_launcher")

RAY_LAUNCHERS = ("hydra_ray_launcher.ray_launcher.RayLauncher", "linreg_sweep.RayStackedLauncher")


_connected: dict[str, object] = {}  # the ray.init arguments of this process's connection


def init_ray(config: DictConfig) -> None:
    """Connect this driver to the cluster; a later sweep in the same process reuses the
    connection (and its warm workers) unless the address or the workers' environment
    changed, which reconnects."""
    from pipeline.context import tracking_uri

    try:
        kwargs = ray_init_kwargs(tracking_uri(config))
    except RuntimeError as exc:  # no cluster named
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if importlib.util.find_spec("ray") is None:
        print("error: Ray is not installed: pip install -e '.[ray]'", file=sys.stderr)
        raise SystemExit(2)
    if is_loopback(str(kwargs["address"])):
        # Ray rewrites 127.0.0.1 to this host's outward address unless told that it runs
        # single-node; a local cluster is reached through loopback only.
        os.environ[SINGLE_NODE_ENV] = "0"
    import ray

    if ray.is_initialized():
        if kwargs == _connected:
            return
        ray.shutdown()
    if is_loopback(str(kwargs["address"])):
        from ray._private import ray_constants  # read at import: already imported, tell it

        ray_constants.ENABLE_RAY_CLUSTER = False
    log.info(f"connecting to the Ray cluster at {kwargs['address']}")
    ray.init(**kwargs)  # type: ignore[arg-type]
    _connected.clear()
    _connected.update(kwargs)


class RayInitCallback(Callback):
    """Before a sweep with a Ray launcher: connect to the existing cluster with the worker
    environment (Hydra's ray launcher then finds Ray initialised and uses that connection)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if target.endswith(RAY_LAUNCHERS):
            init_ray(config)


def finished_children(cfgs: list[DictConfig], context: SweepContext | None) -> dict[str, float]:
    """config_hash -> final mse of the configs of ``cfgs`` that already have a FINISHED run
    under the sweep's parent: what an earlier attempt of the same task logged."""
    from pipeline.context import tracking_uri
    from pipeline.identity import config_hash
    from pipeline.queries import search_all
    from pipeline.store import ensure_experiment

    if context is None:
        return {}
    parent = context.parent_run_id
    uri = tracking_uri(cfgs[0])
    exp_id = ensure_experiment(uri, cfgs[0].tracking.experiment)
    wanted = {config_hash(c) for c in cfgs}
    found = search_all(
        uri,
        exp_id,
        f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'FINISHED'",
    )
    return {
        h: r.data.metrics.get("mse", float("inf"))
        for r in found
        if (h := r.data.tags.get("config_hash")) in wanted
    }


def group_task(
    cfgs: list[DictConfig], overrides: list[list[str]], context: SweepContext | None
) -> list[JobReturn]:
    """The body of one Ray task: :func:`pipeline.job.run_group` on the configs that no
    earlier attempt of this task finished."""
    from pipeline.config import register_configs
    from pipeline.identity import config_hash
    from pipeline.job import run_group

    register_configs()  # resolvers, in a fresh worker process
    done = finished_children(cfgs, context)
    todo = [i for i, c in enumerate(cfgs) if config_hash(c) not in done]
    if len(todo) < len(cfgs):
        log.warning(f"retry: {len(cfgs) - len(todo)} configs already logged, skipped")
    rets = run_group([cfgs[i] for i in todo], [overrides[i] for i in todo], context) if todo else []
    out: list[JobReturn] = []
    for i, cfg in enumerate(cfgs):
        if i in todo:
            out.append(rets[todo.index(i)])
        else:
            ret = JobReturn(overrides=overrides[i], cfg=cfg, status=JobStatus.COMPLETED)
            ret.return_value = done[config_hash(cfg)]
            out.append(ret)
    return out


def chunks(idx: list[int], size: int | None) -> list[list[int]]:
    if not size:
        return [idx]
    return [idx[s : s + size] for s in range(0, len(idx), size)]


class RayStackedLauncherImpl(Launcher):
    stacks_jobs = True  # the sweeper resolves train.engine=auto to `stacked` for its jobs

    def __init__(
        self, max_retries: int = 3, num_cpus: float = 1.0, group_size: int | None = None
    ) -> None:
        self.max_retries, self.num_cpus, self.group_size = max_retries, num_cpus, group_size
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import ray

        from pipeline.config import register_configs
        from pipeline.launcher import outcomes, stacked_batch
        from pipeline.progress import record

        assert self.hydra_context is not None and self.config is not None
        register_configs()
        init_ray(self.config)
        context, job_overrides, cfgs, stacked = stacked_batch(
            self.hydra_context, self.config, job_overrides
        )
        groups = [c for g in stacked for c in chunks(g, self.group_size)]
        resources = ray.cluster_resources()
        log.info(
            f"Ray stacked launcher: {len(cfgs)} jobs in {len(groups)} tasks on "
            f"{resources.get('CPU', 0):g} CPUs"
        )
        task = ray.remote(group_task).options(
            num_cpus=self.num_cpus, max_retries=self.max_retries, name="run_group"
        )
        pending = {
            task.remote([cfgs[i] for i in idx], [list(job_overrides[i]) for i in idx], context): idx
            for idx in groups
        }
        returns: list[JobReturn | None] = [None] * len(cfgs)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            idx = pending.pop(ready[0])
            try:
                rets = ray.get(ready[0])
            except Exception as exc:  # lost for good (worker died past max_retries, ...)
                log.error(f"Ray task of {len(idx)} jobs failed: {exc!r}")
                rets = []
                for i in idx:
                    ret = JobReturn(overrides=list(job_overrides[i]), cfg=cfgs[i])
                    ret.return_value, ret.status = exc, JobStatus.FAILED
                    rets.append(ret)
            for i, ret in zip(idx, rets, strict=True):
                returns[i] = ret
            if context is not None:  # the sweep's progress view shows it
                record(self.config.hydra.sweep.dir, context, outcomes(rets))
        assert all(r is not None for r in returns)
        return returns  # type: ignore[return-value]
