"""What identifies a job: its resolved config as a plain tree, its hash, and its readable name.

Used by the sweeper (cache lookups), the tracking layer (params, tags, run names) and reruns;
nothing here talks to MLflow.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config import PROJECT_ROOT, UNTRACKED_KEYS


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain resolved dict (enums as their strings), for hashing, params and the YAML artifact."""
    out = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.03}} -> {'optim.lr': 0.03}; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_hash(cfg: DictConfig, tree: dict[str, Any] | None = None) -> str:
    """Stable hash of what determines the result: the resolved config (engine included)
    without the tracking/sweep keys (``tree``: ``to_container(cfg)``, if already made)."""
    tree = {k: v for k, v in (tree or to_container(cfg)).items() if k not in UNTRACKED_KEYS}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


# Keys that only repeat a measurement: another seed draws the same experiment again, another
# engine trains the same numbers with other code, the logging keys change how many points of
# the same curves are kept. A cell is a config without them: its runs are replicates.
REPLICATE_KEYS = frozenset({"seed", "train.engine", "train.log_every", "train.log_every_epochs"})


def cell_hash(cfg: DictConfig, tree: dict[str, Any] | None = None) -> str:
    """Stable hash of the config without what only repeats a measurement (REPLICATE_KEYS)."""
    flat = flatten(
        {k: v for k, v in (tree or to_container(cfg)).items() if k not in UNTRACKED_KEYS}
    )
    kept = {k: v for k, v in flat.items() if k not in REPLICATE_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]


def cell_name(cfg: DictConfig, tree: dict[str, Any] | None = None) -> str:
    """The run's cell, readable and unique: its run name's settings without the seed, the
    engine and the logging keys, then :func:`cell_hash` (e.g. ``linear-mse-lr0.03-bs10-
    3f2a9c1b``). Runs of one cell are the seeds (and engines) of one measurement: the MLflow
    UI's *Group by* ``cell`` averages them."""
    tree = tree or to_container(cfg)
    return "-".join([*_name_parts(cfg, tree, skip=REPLICATE_KEYS), cell_hash(cfg, tree)])


@functools.cache
def default_values(*overrides: str) -> dict[str, Any]:
    """The flattened config that ``python -m pipeline`` runs with no overrides (from conf/),
    or with these (group choices: ``optim=adam`` gives Adam's own defaults)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.config import register_configs

    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its own conf/
        cfg = compose(config_name="config", overrides=list(overrides))
    else:
        with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    return flatten(to_container(cfg))


# keys every name shows (first), and short labels for the others when they differ from default
_SHOWN = {"model.name", "loss.name", "loss.reduction", "optim.lr", "train.batch_size", "seed"}
_LABELS = {
    "data.n": "n",
    "train.epochs": "ep",
    "train.min_updates": "upd",
    "init.name": "",
    "data.outliers.fraction": "out",
    "train.drop_last": "droplast",
    "loss.delta": "d",
    "data.noise": "noise",
    "optim.lr_scaling": "lr-",
    "optim.reference_batch_size": "ref",
    "train.engine": "",
    "optim.name": "",
    "optim.momentum": "mom",
    "data.zero_features": "zf",
    "data.n_val": "nval",
    "optim.weight_decay": "wd",
}


def run_name(cfg: DictConfig, tree: dict[str, Any] | None = None) -> str:
    """Short, readable and distinct within a sweep: the always-interesting keys, plus every
    other key that differs from the default config (the engine when it is not the default;
    an optimiser's hyperparameters when they differ from its own file's, conf/optim/).
    ``tree``: ``to_container(cfg)``, if already made."""
    if cfg.tracking.run_name:
        return str(cfg.tracking.run_name)
    return "-".join([*_name_parts(cfg, tree or to_container(cfg)), f"s{cfg.seed}"])


def _name_parts(
    cfg: DictConfig, tree: dict[str, Any], skip: frozenset[str] = frozenset()
) -> list[str]:
    """The settings a run name shows (the seed aside), without the keys in ``skip``."""
    reduction = cfg.loss.reduction.value
    loss = cfg.loss.name.value + ("" if reduction == "mean" else f"-{reduction}")
    parts = [cfg.model.name.value, loss, f"lr{cfg.optim.lr:g}", f"bs{cfg.train.batch_size}"]
    defaults = default_values()
    optim = cfg.optim.name.value
    own = defaults if optim == defaults["optim.name"] else default_values(f"optim={optim}")
    for key, value in flatten(tree).items():
        ref = own if key.startswith("optim.") and key != "optim.name" else defaults
        if key in _SHOWN or key in skip or key.split(".")[0] in UNTRACKED_KEYS:
            continue
        if ref.get(key) == value:
            continue
        if key == "train.engine" and value == "d2l":
            continue  # the model's own code is what the name already says
        label = _LABELS.get(key, key.rsplit(".", 1)[-1])
        if value is True:
            parts.append(label)
        elif isinstance(value, float):
            parts.append(f"{label}{value:g}")
        else:
            parts.append(f"{label}{value}")
    return parts
