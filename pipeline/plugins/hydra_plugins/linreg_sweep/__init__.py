"""Hydra plugins of linreg-sweep. Hydra only loads plugins from the ``hydra_plugins``
namespace, so these thin public classes live here and the work is done in ``pipeline``.
Installed (non-editable) from pipeline/plugins by ``make install``; being thin, the installed
copy never goes stale when the pipeline code changes.

Hydra imports this module when it scans for plugins, in *every* Hydra app of the environment:
so it imports nothing heavy (the implementations, with torch, MLflow and pandas, are imported
when a plugin is set up) and holds only the public plugin classes.
"""

# (no `from __future__ import annotations`: Hydra's scanner runs this module before it is in
# sys.modules, where @dataclass cannot resolve postponed annotations)
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence  # noqa: UP035 (evaluated at runtime)

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

NEEDS = (
    "the linreg-sweep plugins need the linreg-sweep app and its config (keys {keys} missing): "
    "run them as `python -m pipeline -m ...` from the linreg-sweep project"
)
REQUIRED_KEYS = ("tracking", "sweep", "seed")


@dataclass
class GridsSweeperConf:
    _target_: str = "hydra_plugins.linreg_sweep.GridsSweeper"
    # grid name -> {config key: comma-separated values, or one ${...} derived value};
    # the sweep is the union of the grids' cartesian products
    grids: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # noqa: UP006
    # jobs handed to the launcher at once; null = all of them
    max_batch_size: Optional[int] = None  # noqa: UP045


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.linreg_sweep.StackedLauncher"


ConfigStore.instance().store(
    group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="linreg_sweep"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="linreg_sweep"
)


def check_app(config: DictConfig) -> None:
    """One line, not a traceback deep in the pipeline, when used by another Hydra app."""
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise SystemExit("error: " + NEEDS.format(keys=", ".join(missing)))
    try:
        import pipeline  # noqa: F401
    except ImportError:
        raise SystemExit(
            "error: the linreg-sweep plugins need the `pipeline` package: "
            "`make install` in the linreg-sweep project"
        ) from None


class GridsSweeper(Sweeper):
    """Runs the union of several basic-sweeper grids, skipping configs already run."""

    def __init__(
        self,
        grids: Optional[Dict[str, Dict[str, Any]]] = None,  # noqa: UP006, UP045
        max_batch_size: Optional[int] = None,  # noqa: UP045
    ) -> None:
        self.grids, self.max_batch_size = grids, max_batch_size
        self.sweeper: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        check_app(config)
        from pipeline.sweep import GridsSweeperImpl

        self.sweeper = GridsSweeperImpl(grids=self.grids, max_batch_size=self.max_batch_size)
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list) -> Any:
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
