"""The config tree composes, and every bad input is refused before any MLflow run exists."""

from __future__ import annotations

import mlflow
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from pipeline.config import PROJECT_ROOT, ConfigError, LossName, ModelName
from pipeline.job import run_job
from tests.conftest import compose_cfg

GROUPS = ["data", "model", "loss", "init", "optim", "train", "tracking"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (PROJECT_ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [f"{g}={o}" for g in GROUPS for o in options(g)])
def test_every_group_option_composes(override: str) -> None:
    group, option = override.split("=")
    cfg = compose_cfg(override)
    assert cfg.seed == 0
    if group in ("model", "loss", "init", "optim"):
        assert cfg[group].name.value == option


def test_defaults_are_d2l_3_3() -> None:
    cfg = compose_cfg()
    assert cfg.model.name == ModelName.linear and cfg.loss.name == LossName.mse
    assert (cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs) == (0.03, 10, 3)
    assert list(cfg.data.true_w) == [2.0, -3.4] and cfg.data.n == 1000
    assert cfg.loss.reduction.value == "mean" and cfg.init.name.value == "normal"


@pytest.mark.parametrize(
    "override",
    [
        "model=foo",
        "loss=foo",
        "init=foo",
        "loss.reduction=avg",
        "optim.lrr=0.1",
        "optim.lr=abc",
        "train.batch_size=1.5",
        "train.epochs=x",
    ],
)
def test_composition_rejects(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_cfg(override)


BAD = {
    "optim.lr=0": "optim.lr",
    "optim.lr=-0.1": "optim.lr",
    "optim.lr=nan": "optim.lr",
    "train.batch_size=0": "train.batch_size",
    "train.batch_size=1001": "train.batch_size",
    "train.epochs=0": "train.epochs",
    "data.n=0": "data.n",
    "data.noise=-1": "data.noise",
    "+optim.lrr=0.1": "optim.lrr",
    "+foo=1": "foo",
    "+data.outliers.size=3": "data.outliers.size",
    "seed=-1": "seed",
    "data.true_w=[nan,1]": "data.true_w",
    "loss.delta=inf": "loss.delta",
    "data.true_b=-inf": "data.true_b",
    "model.sgd=rebind": "model.sgd",  # linear uses torch.optim: the variants are scratch's
    "data.n_val=-1": "data.n_val",
    "data.zero_features=-2": "data.zero_features",
    "train.log_every_epochs=-1": "train.log_every_epochs=-1: must be >= 1, or 0 for auto",
    "optim.weight_decay=-0.1": "optim.weight_decay",
}


def assert_no_runs(client: mlflow.MlflowClient) -> None:
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps]) if exps else []
    assert runs == []


@pytest.mark.parametrize("override", sorted(BAD))
def test_bad_values_rejected_without_a_run(override: str, client: mlflow.MlflowClient) -> None:
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError) as err:
        run_job(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith(BAD[override])
    assert_no_runs(client)


def test_sgd_variants_train_with_the_scratch_code_only() -> None:
    from pipeline.train import resolve_engine

    auto = compose_cfg("model=scratch", "model.sgd=rebind")
    resolve_engine(auto, stacking=True)  # under the stacked launcher too
    assert auto.train.engine.value == "d2l"
    stacked = compose_cfg("model=scratch", "model.sgd=rebind", "train.engine=stacked")
    with pytest.raises(ConfigError, match=r"^train.engine=stacked: model.sgd=rebind"):
        resolve_engine(stacked, stacking=True)


def test_batch_size_equal_to_n_is_allowed() -> None:
    from pipeline.config import validate

    validate(compose_cfg("train.batch_size=1000", "train.drop_last=true"))


def test_schema_knows_every_yaml_key() -> None:
    # The YAML files only set values the schema declares: merging them raised nothing above,
    # and the resolved config is a plain tree of known leaves.
    tree = OmegaConf.to_container(compose_cfg(), resolve=True, enum_to_str=True)
    assert isinstance(tree, dict) and set(tree) == {
        "data",
        "model",
        "loss",
        "init",
        "optim",
        "train",
        "tracking",
        "sweep",
        "seed",
    }


def test_readme_defaults_are_the_yaml_values() -> None:
    # Defaults are written once, in conf/: the README's table must say the same (a drifted
    # README is a bug this test catches). Rows of one dotted key and one value are checked.
    import re

    import yaml

    from pipeline.identity import flatten, to_container

    values = flatten(to_container(compose_cfg()))
    readme = (PROJECT_ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", readme, re.M)
    checked = 0
    for key, shown in rows:
        if key in values:
            value = float(shown) if isinstance(values[key], float) else yaml.safe_load(shown)
            assert value == values[key], f"README says {key}={shown}, conf/ {values[key]}"
            checked += 1
    assert checked >= 15


def test_the_defaults_comments_name_every_choice_of_each_group() -> None:
    """conf/config.yaml's comment beside each group (with its continuation lines) names
    exactly the options that exist: one file per option in conf/<group>/."""
    import re

    from pipeline.config import PROJECT_ROOT

    conf = PROJECT_ROOT / "conf"
    lines = (conf / "config.yaml").read_text().splitlines()
    comments: dict[str, str] = {}
    group = None
    for line in lines:
        entry = re.match(r"\s*- (\w+): \S+\s*#(.*)", line)
        if entry and (conf / entry[1]).is_dir():
            group, comments[entry[1]] = entry[1], entry[2]
        elif group and re.match(r"\s+# \|", line):  # a continuation of the group's list
            comments[group] += line.split("#", 1)[1]
        else:
            group = None
    groups = {p.name for p in conf.iterdir() if p.is_dir() and p.name != "hydra"}
    assert set(comments) == groups
    for name, text in comments.items():
        named = {part.split()[0] for part in text.split("|")}
        files = {f.stem for f in (conf / name).glob("*.yaml")}
        assert named == files, (name, named ^ files)
