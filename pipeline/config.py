"""Typed schema of the job config, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` only set values; every key and its type live here, so a wrong
type or an unknown choice fails when Hydra composes the config. What a type cannot say (a
positive learning rate, a batch no larger than the data set, keys smuggled in with ``+``) is
checked by :func:`validate`, before any MLflow run exists.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ModelName(str, Enum):
    linear = "linear"  # d2l 3.3: nn.Sequential(nn.Linear), DataLoader, torch.optim.SGD
    scratch = "scratch"  # d2l 3.2: raw tensors, linreg, hand-written loss, data_iter and sgd


class LossName(str, Enum):
    squared = "squared"  # d2l's squared_loss: (y_hat - y)^2 / 2
    mse = "mse"  # nn.MSELoss: (y_hat - y)^2
    huber = "huber"  # nn.HuberLoss: quadratic inside |r| < delta, linear outside


class Reduction(str, Enum):
    mean = "mean"  # divide the batch loss by the real batch length
    sum = "sum"  # plain sum: gradients grow with the batch, so lr must shrink by 1/B


class InitName(str, Enum):
    normal = "normal"  # w ~ N(0, std^2), b = 0 (d2l)
    zeros = "zeros"  # w = 0, b = 0 (exercise: does it still work?)
    xavier = "xavier"  # w ~ U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)), b = 0


class DType(str, Enum):
    float64 = "float64"  # default: float32 rounding of w (~2e-7) is 0.1% of the error we measure
    float32 = "float32"  # d2l's dtype


@dataclass
class OutliersConfig:
    fraction: float = 0.0  # share of labels corrupted, in [0, 1); 0 = clean data
    scale: float = 10.0  # corrupted labels get noise N(0, scale^2) added


@dataclass
class DataConfig:
    true_w: list[float] = field(default_factory=lambda: [2.0, -3.4])  # any length works
    true_b: float = 4.2  # true bias
    n: int = 1000  # number of examples
    noise: float = 0.01  # std of the Gaussian label noise (sigma)
    outliers: OutliersConfig = field(default_factory=OutliersConfig)  # for Huber to shine


@dataclass
class ModelConfig:
    name: ModelName = ModelName.linear  # which implementation trains the model


@dataclass
class LossConfig:
    name: LossName = LossName.mse  # per-sample loss
    reduction: Reduction = Reduction.mean  # how a batch's per-sample losses are combined
    delta: float = 1.0  # Huber threshold (ignored by the other losses)


@dataclass
class InitConfig:
    name: InitName = InitName.normal  # initial weights; the bias always starts at 0
    std: float = 0.01  # std of the normal init
    gain: float = 1.0  # gain of the xavier init


@dataclass
class OptimConfig:
    lr: float = 0.03  # SGD learning rate


@dataclass
class TrainConfig:
    batch_size: int = 10  # minibatch size B, 1 <= B <= data.n
    epochs: int = 3  # passes over the data
    drop_last: bool = False  # drop the last partial batch when B does not divide n
    log_every: int = 1  # log batch_loss and grad_norm every this many updates
    dtype: DType = DType.float64  # floating point type of data and parameters
    divergence_ratio: float = 1e6  # batch loss > ratio * max(initial loss, 1) = diverged


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLflow tracking URI; null = $MLFLOW_TRACKING_URI or mlruns/
    experiment: str = "linreg"  # MLflow experiment name
    run_name: str | None = None  # null = derived from the config, e.g. linear-mse-lr0.03-bs10-s0
    parent_run_id: str | None = None  # set by the sweeper: the sweep's MLflow parent run


@dataclass
class SweepConfig:
    name: str = "none"  # preset that launched the job (set by conf/sweep/*.yaml)
    force: bool = False  # retrain jobs whose config already has a FINISHED run
    total: int = 0  # set by the sweeper: jobs it launches (for progress lines)
    started: float = 0.0  # set by the sweeper: its start time (for progress lines)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0  # fixes data, initial weights and batch order


# Keys that say where and how results are stored, not what is trained: left out of config_hash.
UNTRACKED_KEYS = ("tracking", "sweep")


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore (conf/config.yaml lists it first in its defaults)
    and the ``${project_root:}`` resolver that anchors output paths whatever the cwd."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# Arithmetic that presets use to derive one key from another (e.g. sum's lr = mean's lr / B)
# instead of typing the result by hand.
RESOLVERS: dict[str, Any] = {
    "project_root": lambda: str(PROJECT_ROOT),
    "scaled": lambda base, b, ref, power: base * (b / ref) ** power,  # base * (b/ref)^power
    "min": lambda *xs: min(xs),
    "max": lambda *xs: max(xs),
    "ceil_div": lambda a, b: -(-a // b),
}


class ConfigError(ValueError):
    """A config value that the schema's types cannot rule out; the message is one line."""


@functools.cache
def schema() -> DictConfig:
    """The schema as a DictConfig with its defaults (built once: it takes milliseconds).
    Read it, never modify it."""
    return OmegaConf.structured(Config)


def _check_known_keys(node: DictConfig, schema: DictConfig, prefix: str = "") -> None:
    """Reject keys the schema does not know. Hydra's struct mode stops misspelled overrides,
    but keys added with ``+`` are force-added past it, so walk the tree against the schema."""
    for key in node:
        full = f"{prefix}{key!s}"
        if key not in schema:
            where = f" in {prefix[:-1]}" if prefix else ""
            allowed = ", ".join(str(k) for k in schema)
            raise ConfigError(f"{full}: unknown config key; allowed keys{where}: {allowed}")
        child, child_schema = node[key], schema[key]
        if isinstance(child, DictConfig) and isinstance(child_schema, DictConfig):
            _check_known_keys(child, child_schema, f"{full}.")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line: key, value, what is allowed) for a bad config."""
    _check_known_keys(cfg, schema())
    lr = cfg.optim.lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"optim.lr={lr}: must be a finite number > 0")
    n = cfg.data.n
    if n < 1:
        raise ConfigError(f"data.n={n}: must be >= 1")
    bs = cfg.train.batch_size
    if not 1 <= bs <= n:
        raise ConfigError(f"train.batch_size={bs}: must be between 1 and data.n={n}")
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs={cfg.train.epochs}: must be >= 1")
    if not cfg.train.divergence_ratio > 1:
        raise ConfigError(f"train.divergence_ratio={cfg.train.divergence_ratio}: must be > 1")
    if cfg.train.log_every < 1:
        raise ConfigError(f"train.log_every={cfg.train.log_every}: must be >= 1")
    if not (math.isfinite(cfg.data.noise) and cfg.data.noise >= 0):
        raise ConfigError(f"data.noise={cfg.data.noise}: must be a finite number >= 0")
    if len(cfg.data.true_w) < 1:
        raise ConfigError("data.true_w=[]: must hold at least one weight")
    frac = cfg.data.outliers.fraction
    if not 0 <= frac < 1:
        raise ConfigError(f"data.outliers.fraction={frac}: must be in [0, 1)")
    if cfg.data.outliers.scale < 0:
        raise ConfigError(f"data.outliers.scale={cfg.data.outliers.scale}: must be >= 0")
    if not cfg.loss.delta > 0:
        raise ConfigError(f"loss.delta={cfg.loss.delta}: must be > 0")
    if cfg.init.std < 0:
        raise ConfigError(f"init.std={cfg.init.std}: must be >= 0")
