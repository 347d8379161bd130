"""The config dataclasses of the Hydra plugins (``hydra/sweeper=grids``,
``hydra/launcher=stacked|ray_stacked``). Standard library only: Hydra imports the plugin
package, and so this module, in every Hydra app of the environment when it scans for plugins.
Kept in ``pipeline`` (not in the installed plugin copy) so that a new field needs no reinstall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
class StackedLauncherConf:
    _target_: str = "hydra_plugins.linreg_sweep.StackedLauncher"


@dataclass
class RayStackedLauncherConf:
    _target_: str = "hydra_plugins.linreg_sweep.RayStackedLauncher"
    # Ray re-runs a task whose worker died this many times; 0 = its jobs are reported FAILED
    max_retries: int = 3
    # CPUs reserved per task (a group is one process; torch in it uses this many threads)
    num_cpus: float = 1.0
    # split each stacked group into tasks of at most this many configs (null = whole groups,
    # bit-identical to the stacked launcher; a split group may differ in the last bits)
    group_size: int | None = None
