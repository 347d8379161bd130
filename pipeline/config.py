"""Typed schema of the job config, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` only set values; every key and its type live here, so a wrong
type or an unknown choice fails when Hydra composes the config. What a type cannot say (a
positive learning rate, a batch no larger than the data set, keys smuggled in with ``+``) is
checked by :func:`validate`, before any MLflow run exists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf


class ModelName(str, Enum):
    linear = "linear"  # d2l 3.3: nn.Sequential(nn.Linear), DataLoader, torch.optim.SGD
    scratch = "scratch"  # d2l 3.2: raw tensors, linreg, hand-written loss, data_iter and sgd


class SgdVariant(str, Enum):
    """How the scratch model's hand-written ``sgd`` is written: d2l's, or one of the mistakes
    the autograd experiment measures (``make sweep SWEEP=no_grad``)."""

    no_grad = "no_grad"  # d2l: `with torch.no_grad(): param -= lr * param.grad; grad.zero_()`
    without_no_grad = "without_no_grad"  # the same in-place update outside torch.no_grad()
    rebind = "rebind"  # `param = param - lr * param.grad` outside no_grad: joins the graph
    rebind_detach = "rebind_detach"  # the same, then `.detach().requires_grad_()`: fixed
    no_zero_grad = "no_zero_grad"  # d2l's update without `param.grad.zero_()`


class LossName(str, Enum):
    squared = "squared"  # d2l's squared_loss: (y_hat - y)^2 / 2
    mse = "mse"  # nn.MSELoss: (y_hat - y)^2
    huber = "huber"  # nn.HuberLoss: quadratic inside |r| < delta, linear outside
    l1 = "l1"  # nn.L1Loss: |y_hat - y|
    smooth_l1 = "smooth_l1"  # nn.SmoothL1Loss with beta = loss.delta: huber(delta) / delta


class Reduction(str, Enum):
    mean = "mean"  # divide the batch loss by the real batch length
    sum = "sum"  # plain sum: gradients grow with the batch, so lr must shrink by 1/B
    nominal = "nominal"  # sum / train.batch_size: d2l 3.2's sgd, a partial batch steps short


class InitName(str, Enum):
    normal = "normal"  # w ~ N(0, std^2), b = 0 (d2l)
    zeros = "zeros"  # w = 0, b = 0 (exercise: does it still work?)
    xavier = "xavier"  # w ~ U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)), b = 0
    kaiming = "kaiming"  # w ~ N(0, 1 / fan_in): He's init, nonlinearity 'linear' (gain 1), b = 0


class EngineName(str, Enum):
    auto = "auto"  # stacked under a stacking launcher (if the loss allows), else d2l
    d2l = "d2l"  # the model's own d2l code: scratch (3.2) or linear (3.3), one config at a time
    stacked = "stacked"  # the closed-form step that trains K configs as one computation


class LrScaling(str, Enum):
    none = "none"  # lr as given
    sqrt = "sqrt"  # lr * sqrt(B / reference_batch_size)
    linear = "linear"  # lr * B / reference_batch_size (the linear scaling rule)
    inverse = "inverse"  # lr * reference_batch_size / B (sum reduction's step = mean's step)


class ScheduleName(str, Enum):
    constant = "constant"  # lr at every update
    step = "step"  # lr * gamma ** floor(t / decay_updates)
    inverse_time = "inverse_time"  # lr / (1 + t / decay_updates)
    cosine = "cosine"  # lr * (1 + cos(pi t / T)) / 2 over the run's T updates


class OptimizerName(str, Enum):
    sgd = "sgd"  # torch.optim.SGD: θ -= lr·g, or heavy ball with optim.momentum (d2l 11.6)
    adam = "adam"  # torch.optim.Adam: bias-corrected running means of g and g² (d2l 11.10)
    adagrad = "adagrad"  # torch.optim.Adagrad: g over the root of the sum of all g² (d2l 11.7)
    rmsprop = "rmsprop"  # torch.optim.RMSprop: g over the root of a running mean of g² (d2l 11.8)


class AveragingName(str, Enum):
    none = "none"  # the model is the last iterate
    tail = "tail"  # the model is the mean of the iterates after optim.average_from of training


class DataSourceName(str, Enum):
    memory = "memory"  # all n examples drawn at once and held (d2l's synthetic_data)
    stream = "stream"  # drawn chunk by chunk from (seed, chunk index), one chunk held at a time


class DType(str, Enum):
    float64 = "float64"  # default: float32 rounding of w (~2e-7) is 0.1% of the error we measure
    float32 = "float32"  # d2l's dtype


# Leaves are MISSING: the schema holds types and meanings, the YAML under conf/ holds the
# values, so every default is written once (README's table is checked against the YAML).


@dataclass
class OutliersConfig:
    fraction: float = MISSING  # share of labels corrupted, in [0, 1); 0 = clean data
    scale: float = MISSING  # corrupted labels get noise N(0, scale^2) added


@dataclass
class DataConfig:
    true_w: list[float] = MISSING  # true weights, any length
    true_b: float = MISSING  # true bias
    n: int = MISSING  # number of examples
    noise: float = MISSING  # std of the Gaussian label noise (sigma)
    zero_features: int = MISSING  # extra features whose true weight is 0: d = len(true_w) + this
    n_val: int = MISSING  # held-out examples from the same distribution (own stream); 0 = none
    outliers: OutliersConfig = field(default_factory=OutliersConfig)  # for Huber to shine
    source: DataSourceName = MISSING  # memory (all held) or stream (chunks, never all held)
    chunk_size: int = MISSING  # examples per chunk of a stream (a multiple of train.batch_size)


@dataclass
class ModelConfig:
    name: ModelName = MISSING  # which d2l implementation (train.engine=d2l trains with it)
    sgd: SgdVariant = MISSING  # scratch's sgd as d2l writes it, or a measured mistake


@dataclass
class LossConfig:
    name: LossName = MISSING  # per-sample loss
    reduction: Reduction = MISSING  # how a batch's per-sample losses are combined
    delta: float = MISSING  # where huber and smooth_l1 turn linear: Huber's delta, SmoothL1's beta


@dataclass
class InitConfig:
    name: InitName = MISSING  # initial weights; the bias always starts at 0
    std: float = MISSING  # std of the normal init
    gain: float = MISSING  # gain of the xavier init


@dataclass
class OptimConfig:
    name: OptimizerName = MISSING  # the update rule (conf/optim/<name>.yaml: torch's defaults)
    lr: float = MISSING  # learning rate, before lr_scaling
    momentum: float = MISSING  # sgd: heavy-ball momentum in [0, 1) (dampening 0); 0 = plain SGD
    beta1: float = MISSING  # adam: decay of the running mean of g, in [0, 1)
    beta2: float = MISSING  # adam: decay of the running mean of g², in [0, 1)
    alpha: float = MISSING  # rmsprop: decay of the running mean of g², in [0, 1)
    eps: float = MISSING  # adam, adagrad, rmsprop: added to the root in the denominator, > 0
    lr_scaling: LrScaling = MISSING  # how the lr follows the batch size
    reference_batch_size: int = MISSING  # the B at which lr_scaling leaves lr unchanged
    schedule: ScheduleName = MISSING  # how the lr changes over the updates
    decay_updates: int = MISSING  # the step schedule's interval, inverse_time's time constant
    gamma: float = MISSING  # the step schedule's factor per interval, in (0, 1]
    averaging: AveragingName = MISSING  # iterate averaging (Polyak-Ruppert: average_from 0)
    average_from: float = MISSING  # share of the updates after which iterates are averaged
    weight_decay: float = MISSING  # L2 on the weights (not the bias): adds weight_decay * w to ∇w


@dataclass
class TrainConfig:
    batch_size: int = MISSING  # minibatch size B, 1 <= B <= data.n
    epochs: int = MISSING  # passes over the data (at least)
    min_updates: int = MISSING  # more epochs if needed to make at least this many updates
    drop_last: bool = MISSING  # drop the last partial batch when B does not divide n
    log_every: int = (
        MISSING  # batch_loss/grad_norm every this many updates; 0 = auto (≤ ~100 points)
    )
    # the epoch metrics every this many epochs (and the last); 0 = every epoch when log_every
    # is set, else auto (≤ ~200 points)
    log_every_epochs: int = MISSING
    dtype: DType = MISSING  # floating point type of data and parameters
    divergence_ratio: float = MISSING  # batch loss > ratio * max(initial loss, 1) = diverged
    engine: EngineName = MISSING  # which code trains the job; the run's `engine` tag


@dataclass
class TrackingConfig:
    uri: str | None = MISSING  # MLflow tracking URI; null = $MLFLOW_TRACKING_URI or mlruns/
    experiment: str = MISSING  # MLflow experiment name
    run_name: str | None = MISSING  # null = derived from the config, e.g. linear-mse-lr0.03-bs10-s0


@dataclass
class SweepConfig:
    name: str = MISSING  # preset that launched the job (set by conf/sweep/*.yaml)
    force: bool = MISSING  # retrain jobs whose config already has a FINISHED run
    report: bool = MISSING  # build the FAQ report on the parent run when the sweep ends


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
    seed: int = MISSING  # fixes data, initial weights and batch order


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


RESOLVERS: dict[str, Any] = {"project_root": lambda: str(PROJECT_ROOT)}


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
        if key not in list(schema):  # `in` alone says False for a MISSING value
            where = f" in {prefix[:-1]}" if prefix else ""
            allowed = ", ".join(str(k) for k in schema)
            raise ConfigError(f"{full}: unknown config key; allowed keys{where}: {allowed}")
        child, child_schema = node._get_node(key), schema._get_node(key)
        if isinstance(child, DictConfig) and isinstance(child_schema, DictConfig):
            _check_known_keys(child, child_schema, f"{full}.")


def _finite_floats(node: DictConfig, prefix: str = "") -> None:
    """Every float in the config is finite: a nan weight or an inf δ is never a setting."""
    for key in node:
        full, value = f"{prefix}{key!s}", node[key]
        if isinstance(value, DictConfig):
            _finite_floats(value, f"{full}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{full}={value}: must be a finite number")
        elif isinstance(value, ListConfig) and any(
            isinstance(v, float) and not math.isfinite(v) for v in value
        ):
            raise ConfigError(f"{full}={list(value)}: every value must be a finite number")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line: key, value, what is allowed) for a bad config."""
    _check_known_keys(cfg, schema())
    _finite_floats(cfg)
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"seed={cfg.seed}: must be in [0, 2**63)")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr}: must be a finite number > 0")
    if cfg.optim.reference_batch_size < 1:
        raise ConfigError(
            f"optim.reference_batch_size={cfg.optim.reference_batch_size}: must be >= 1"
        )
    if cfg.optim.decay_updates < 1:
        raise ConfigError(f"optim.decay_updates={cfg.optim.decay_updates}: must be >= 1")
    if not 0 < cfg.optim.gamma <= 1:
        raise ConfigError(f"optim.gamma={cfg.optim.gamma}: must be in (0, 1]")
    o = cfg.optim
    for key in ("momentum", "beta1", "beta2", "alpha"):
        if not 0 <= o[key] < 1:
            raise ConfigError(f"optim.{key}={o[key]}: must be in [0, 1)")
    if o.momentum != 0 and OptimizerName(o.name) != OptimizerName.sgd:
        raise ConfigError(
            f"optim.momentum={o.momentum}: only optim=sgd takes momentum (optim={o.name.value})"
        )
    if not o.eps > 0:
        raise ConfigError(f"optim.eps={o.eps}: must be > 0")
    if not 0 <= cfg.optim.average_from < 1:
        raise ConfigError(f"optim.average_from={cfg.optim.average_from}: must be in [0, 1)")
    if cfg.model.sgd != SgdVariant.no_grad and cfg.model.name != ModelName.scratch:
        raise ConfigError(
            f"model.sgd={cfg.model.sgd.value}: only model=scratch writes its own sgd "
            "(model=linear uses torch.optim); allowed with linear: no_grad"
        )
    if cfg.model.sgd != SgdVariant.no_grad and (
        OptimizerName(o.name) != OptimizerName.sgd or o.momentum != 0
    ):
        raise ConfigError(
            f"model.sgd={cfg.model.sgd.value}: the sgd variants are plain SGD (optim=sgd, "
            f"optim.momentum=0); allowed with optim={o.name.value}: no_grad"
        )
    n = cfg.data.n
    if n < 1:
        raise ConfigError(f"data.n={n}: must be >= 1")
    bs = cfg.train.batch_size
    if not 1 <= bs <= n:
        raise ConfigError(f"train.batch_size={bs}: must be between 1 and data.n={n}")
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs={cfg.train.epochs}: must be >= 1")
    if cfg.train.min_updates < 0:
        raise ConfigError(f"train.min_updates={cfg.train.min_updates}: must be >= 0")
    if not cfg.train.divergence_ratio > 1:
        raise ConfigError(f"train.divergence_ratio={cfg.train.divergence_ratio}: must be > 1")
    if cfg.train.log_every < 0:
        raise ConfigError(f"train.log_every={cfg.train.log_every}: must be >= 1, or 0 for auto")
    if cfg.train.log_every_epochs < 0:
        raise ConfigError(
            f"train.log_every_epochs={cfg.train.log_every_epochs}: must be >= 1, or 0 for auto"
        )
    if not cfg.data.noise >= 0:
        raise ConfigError(f"data.noise={cfg.data.noise}: must be a finite number >= 0")
    if len(cfg.data.true_w) < 1:
        raise ConfigError("data.true_w=[]: must hold at least one weight")
    if cfg.data.zero_features < 0:
        raise ConfigError(f"data.zero_features={cfg.data.zero_features}: must be >= 0")
    if cfg.data.n_val < 0:
        raise ConfigError(f"data.n_val={cfg.data.n_val}: must be >= 0 (0 = no validation set)")
    if not cfg.optim.weight_decay >= 0:
        raise ConfigError(f"optim.weight_decay={cfg.optim.weight_decay}: must be >= 0")
    frac = cfg.data.outliers.fraction
    if not 0 <= frac < 1:
        raise ConfigError(f"data.outliers.fraction={frac}: must be in [0, 1)")
    chunk = cfg.data.chunk_size
    if chunk < 1:
        raise ConfigError(f"data.chunk_size={chunk}: must be >= 1")
    stream = DataSourceName(cfg.data.source) == DataSourceName.stream
    if stream and n > chunk and chunk % bs:
        raise ConfigError(
            f"data.chunk_size={chunk}: must be a multiple of train.batch_size={bs} with "
            f"data.source=stream (a batch never straddles two chunks)"
        )
    if cfg.data.outliers.scale < 0:
        raise ConfigError(f"data.outliers.scale={cfg.data.outliers.scale}: must be >= 0")
    if not cfg.loss.delta > 0:
        raise ConfigError(f"loss.delta={cfg.loss.delta}: must be > 0")
    if cfg.init.std < 0:
        raise ConfigError(f"init.std={cfg.init.std}: must be >= 0")


# --- values derived from the config (one definition each) -------------------------------------

_LR_POWER = {
    LrScaling.none: 0.0,
    LrScaling.sqrt: 0.5,
    LrScaling.linear: 1.0,
    LrScaling.inverse: -1.0,
}


def effective_lr(cfg: DictConfig) -> float:
    """The lr the optimiser uses: optim.lr * (B / reference_batch_size) ** power."""
    o = cfg.optim
    power = _LR_POWER[LrScaling(o.lr_scaling)]
    return float(o.lr) * (cfg.train.batch_size / o.reference_batch_size) ** power


def updates_per_epoch(cfg: DictConfig) -> int:
    n, b = cfg.data.n, cfg.train.batch_size
    return n // b if cfg.train.drop_last else -(-n // b)


def planned_epochs(cfg: DictConfig) -> int:
    """train.epochs, or more when train.min_updates asks for more updates than that."""
    t = cfg.train
    return max(int(t.epochs), -(-int(t.min_updates) // updates_per_epoch(cfg)))


def planned_updates(cfg: DictConfig) -> int:
    return planned_epochs(cfg) * updates_per_epoch(cfg)


def lr_factor(cfg: DictConfig) -> Callable[[int], float]:
    """The schedule as a function of the update index t = 0, 1, ... (the first update has the
    full lr): lr_t = effective_lr * factor(t)."""
    o = cfg.optim
    schedule, every, gamma = ScheduleName(o.schedule), int(o.decay_updates), float(o.gamma)
    total = planned_updates(cfg)
    if schedule == ScheduleName.step:
        return lambda t: gamma ** (t // every)
    if schedule == ScheduleName.inverse_time:
        return lambda t: 1.0 / (1.0 + t / every)
    if schedule == ScheduleName.cosine:
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * t / total))
    return lambda t: 1.0


def averaging_start(cfg: DictConfig) -> int | None:
    """Updates after which the iterates are averaged (None: the model is the last iterate)."""
    if AveragingName(cfg.optim.averaging) == AveragingName.none:
        return None
    return int(math.floor(float(cfg.optim.average_from) * planned_updates(cfg)))
