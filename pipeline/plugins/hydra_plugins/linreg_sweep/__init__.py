"""Hydra plugins of linreg-sweep. Hydra only loads plugins from the ``hydra_plugins``
namespace, so these thin public classes live here and the work is done in ``pipeline``.
Installed (non-editable) from pipeline/plugins by ``make install``; being thin, the installed
copy never goes stale when the pipeline code changes.

Hydra imports this module when it scans for plugins, in *every* Hydra app of the environment:
so it imports nothing heavy (the implementations, with torch, MLflow and pandas, are imported
when a plugin is set up; the config dataclasses live in the light ``pipeline.plugin_conf``)
and holds only the public plugin classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# standard library only (no torch, MLflow or pandas)
from pipeline.plugin_conf import GridsSweeperConf, RayStackedLauncherConf, StackedLauncherConf

ConfigStore.instance().store(
    group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="linreg_sweep"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="linreg_sweep"
)
ConfigStore.instance().store(
    group="hydra/launcher",
    name="ray_stacked",
    node=RayStackedLauncherConf,
    provider="linreg_sweep",
)

REQUIRED_KEYS = ("tracking", "sweep", "seed")


def check_app(config: DictConfig) -> None:
    """One line, not a traceback deep in the pipeline, when used by another Hydra app."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise SystemExit(
            f"error: the linreg-sweep plugins need the linreg-sweep app and its config (keys "
            f"{', '.join(missing)} missing): run them as `python -m pipeline -m ...` from the "
            "linreg-sweep project"
        )


class GridsSweeper(Sweeper):
    """Runs the union of several basic-sweeper grids, skipping configs already run."""

    def __init__(self, **params: Any) -> None:
        # every field of GridsSweeperConf, passed through: this installed copy stays valid
        # when the schema in pipeline.plugin_conf grows
        self.params = params
        self.sweeper: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        check_app(config)
        from pipeline.sweep import GridsSweeperImpl

        self.sweeper = GridsSweeperImpl(**self.params)
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)


class StackedLauncher(Launcher):
    """Trains the jobs that share data and batch schedule as one stacked computation."""

    stacks_jobs = True  # the sweeper resolves train.engine=auto to `stacked` for its jobs

    def __init__(self) -> None:
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        check_app(config)
        from pipeline.launcher import StackedLauncherImpl

        self.launcher = StackedLauncherImpl()
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.launcher.launch(job_overrides, initial_job_idx)


class RayStackedLauncher(Launcher):
    """Sends each stacked group to one Ray task on an existing cluster (``make cluster`` or
    $RAY_ADDRESS); Ray itself is imported only when it launches."""

    stacks_jobs = True

    def __init__(
        self, max_retries: int = 3, num_cpus: float = 1.0, group_size: int | None = None
    ) -> None:
        self.args = (max_retries, num_cpus, group_size)
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        check_app(config)
        from pipeline.ray_launcher import RayStackedLauncherImpl

        self.launcher = RayStackedLauncherImpl(*self.args)
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.launcher.launch(job_overrides, initial_job_idx)
