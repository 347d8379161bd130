"""Which code trains a config: torch-free, so that planning a sweep (validate, settle each job's
engine, hash it) never imports torch; a fully cached sweep trains nothing and needs none.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.config import ConfigError, EngineName, LossName, ModelName, SgdVariant

# Losses with a closed form in the stacked engine (pipeline.losses implements it): a loss added
# without one is simply absent here, and its jobs train with their model's d2l code.
STACKABLE = frozenset(
    {LossName.squared, LossName.mse, LossName.huber, LossName.l1, LossName.smooth_l1}
)


def engine_of(cfg: DictConfig) -> str:
    """The code that trains a resolved config: ``scratch``, ``linear`` or ``stacked`` (the
    run's ``engine`` tag)."""
    engine = EngineName(cfg.train.engine)
    if engine == EngineName.auto:
        raise ValueError("train.engine=auto: resolve_engine() first")
    return "stacked" if engine == EngineName.stacked else ModelName(cfg.model.name).value


def resolve_engine(cfg: DictConfig, stacking: bool) -> None:
    """Settle ``train.engine=auto`` in place: ``stacked`` under a stacking launcher when the loss
    has a closed form, else the model's own ``d2l`` code. The resolved value is part of the
    config (and of its hash): a cached stacked run never stands in for a d2l one."""
    engine = EngineName(cfg.train.engine)
    stackable = LossName(cfg.loss.name) in STACKABLE
    d2l_update = SgdVariant(cfg.model.sgd) == SgdVariant.no_grad
    if engine == EngineName.auto:
        engine = EngineName.stacked if stacking and stackable and d2l_update else EngineName.d2l
        cfg.train.engine = engine
    if engine == EngineName.stacked and not stackable:
        raise ConfigError(
            f"train.engine=stacked: loss {cfg.loss.name.value} has no closed form in the stacked "
            f"engine; use train.engine=d2l or auto"
        )
    if engine == EngineName.stacked and not d2l_update:
        raise ConfigError(
            f"train.engine=stacked: model.sgd={cfg.model.sgd.value} is an experiment on "
            "the scratch code's own sgd; use train.engine=d2l or auto"
        )
