"""Hydra plugins of linreg-sweep. Hydra only loads plugins from the ``hydra_plugins``
namespace, so these thin public classes live here and the work is done in ``pipeline``.
Installed (non-editable) from pipeline/plugins by ``make install``; being thin, the installed
copy never goes stale when the pipeline code changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# (the config dataclasses live in pipeline: Hydra's plugin scanner runs this module before it
# is in sys.modules, where @dataclass cannot resolve postponed annotations)
from pipeline.launcher import StackedLauncherConf, StackedLauncherImpl
from pipeline.ray_launcher import RayStackedLauncherConf, RayStackedLauncherImpl  # no ray import
from pipeline.sweep import GridsSweeperConf, GridsSweeperImpl

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


class GridsSweeper(Sweeper):
    """Runs the union of several basic-sweeper grids, skipping configs already run."""

    def __init__(self, **params: Any) -> None:
        # every field of GridsSweeperConf, passed through: this installed copy stays valid
        # when the schema in pipeline.sweep grows
        self.sweeper = GridsSweeperImpl(**params)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)


class StackedLauncher(Launcher):
    """Trains the jobs that share data and batch schedule as one stacked computation."""

    def __init__(self) -> None:
        self.launcher = StackedLauncherImpl()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.launcher.launch(job_overrides, initial_job_idx)


class RayStackedLauncher(Launcher):
    """Sends each stacked group to one Ray task on an existing cluster (``make cluster`` or
    $RAY_ADDRESS); Ray itself is imported only when it launches."""

    def __init__(
        self, max_retries: int = 3, num_cpus: float = 1.0, group_size: int | None = None
    ) -> None:
        self.launcher = RayStackedLauncherImpl(max_retries, num_cpus, group_size)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        return self.launcher.launch(job_overrides, initial_job_idx)
