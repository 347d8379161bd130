"""The optimisers (optim=sgd|adam|adagrad|rmsprop, optim.momentum): conf/optim sets torch's
defaults, and the stacked closed form and the hand-written d2l chapter 11 optimisers follow
torch.optim's update rules to 1e-10 in float64 over many updates."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, validate
from pipeline.identity import config_hash, run_name
from pipeline.train import History, group_by_schedule, train, train_one
from tests.conftest import compose_cfg

TORCH = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_each_optim_file_sets_torchs_defaults(name: str) -> None:
    o = compose_cfg(f"optim={name}").optim
    defaults = {k: p.default for k, p in inspect.signature(TORCH[name]).parameters.items()}
    assert o.name.value == name
    # lr included, except SGD's, which keeps d2l 3.3's 0.03 (torch's SGD has no default lr)
    assert o.lr == (0.03 if name == "sgd" else defaults["lr"])
    if "betas" in defaults:
        assert (o.beta1, o.beta2) == defaults["betas"]
    for key in ("momentum", "alpha", "eps"):
        if key in defaults:
            assert o[key] == defaults[key], key


# Cells where every engine's trajectory is a contraction (none of RMSprop's or Huber's chaotic
# bouncing at a large lr, where no two float codes agree): 500 updates each, B = 10, some
# with a schedule that moves the lr at every update, one diverging SGD model in the stack.
CELLS: list[tuple[str, ...]] = [
    ("optim.lr=0.05",),
    ("optim.momentum=0.9", "optim.lr=0.003"),
    ("optim.momentum=0.5", "optim.lr=0.03", "optim.schedule=cosine"),
    ("optim=adam", "optim.lr=0.03"),
    ("optim=adam", "optim.lr=0.1", "optim.schedule=step", "optim.decay_updates=200"),
    ("optim=adam", "optim.lr=0.05", "optim.beta1=0.8", "optim.beta2=0.99", "optim.eps=1e-6"),
    ("optim=adagrad", "optim.lr=0.3"),
    ("optim=adagrad", "optim.lr=1", "loss=squared"),
    ("optim=rmsprop", "optim.lr=0.01"),
    ("optim=rmsprop", "optim.lr=0.01", "optim.alpha=0.9", "loss=huber"),
    ("optim.lr=5",),  # diverges: frozen, it rides along with lr 0
]
COMMON = ("train.epochs=5",)


def assert_equal(a: History, b: History, tol: float = 1e-10) -> None:
    assert a.diverged_at_step == b.diverged_at_step and a.updates == b.updates
    for key in ("train_loss", "mse", "w_error", "b_error"):
        np.testing.assert_allclose(a.epochs[key], b.epochs[key], rtol=tol, atol=1e-14)
    np.testing.assert_allclose(a.batch_loss, b.batch_loss, rtol=tol, atol=1e-14)
    np.testing.assert_allclose(a.grad_norm, b.grad_norm, rtol=tol, atol=1e-14)
    np.testing.assert_allclose([*a.w_hat, a.b_hat], [*b.w_hat, b.b_hat], rtol=0, atol=tol)


@pytest.fixture(scope="module")
def stacked() -> list[History]:
    cfgs = [compose_cfg("train.engine=stacked", *COMMON, *c) for c in CELLS]
    assert len(group_by_schedule(cfgs)) == 1  # every optimiser in one stack
    return train(cfgs)


@pytest.mark.parametrize("i", range(len(CELLS)), ids=["-".join(c) for c in CELLS])
def test_stacked_and_scratch_follow_torch_optim(i: int, stacked: list[History]) -> None:
    linear = train_one(compose_cfg(*COMMON, *CELLS[i]))  # torch.optim itself
    assert linear.updates == 500 or linear.diverged
    assert_equal(stacked[i], linear)
    assert_equal(train_one(compose_cfg("model=scratch", *COMMON, *CELLS[i])), linear)


def test_a_diverged_model_leaves_no_nan_behind(stacked: list[History]) -> None:
    frozen = stacked[-1]
    assert frozen.diverged and all(np.isfinite([*frozen.w_hat, frozen.b_hat]))
    # the others trained: far below the initial error (about 3.9)
    assert all(not h.diverged and h.epochs["w_error"][-1] < 0.1 for h in stacked[:-1])


def test_adam_with_a_frozen_state_that_overflowed_does_not_move() -> None:
    from pipeline.steps import StackedRule

    cfgs = [compose_cfg("optim=adam"), compose_cfg("optim=rmsprop"), compose_cfg()]
    theta = torch.ones(3, 3, dtype=torch.float64)
    rule = StackedRule(cfgs, theta)
    grad = torch.full((3, 3), 1e200, dtype=torch.float64)  # g² overflows: v = inf
    lr = torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64)
    moved = rule.step(theta, grad, lr)
    assert torch.equal(moved[:2], theta[:2]) and torch.isfinite(moved).all()
    grad = torch.full((3, 3), float("nan"), dtype=torch.float64)
    assert torch.equal(rule.step(theta, grad, lr)[:2], theta[:2])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("optim=adam", "optim.momentum=0.9"), "optim.momentum=0.9: only optim=sgd"),
        (("optim.momentum=1",), "optim.momentum=1"),
        (("optim=adam", "optim.beta2=1.0"), "optim.beta2=1.0"),
        (("optim=rmsprop", "optim.alpha=-0.1"), "optim.alpha=-0.1"),
        (("optim=adagrad", "optim.eps=0"), "optim.eps=0"),
        (("model=scratch", "model.sgd=rebind", "optim=adam"), "model.sgd=rebind: the sgd"),
    ],
)
def test_bad_hyperparameters_are_one_line_errors(overrides: tuple[str, ...], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_the_optimiser_is_part_of_identity() -> None:
    cfgs: dict[str, Any] = {
        o: compose_cfg(*o.split()) for o in ["", "optim=adam", "optim.momentum=0.9"]
    }
    assert len({config_hash(c) for c in cfgs.values()}) == 3
    assert run_name(cfgs["optim=adam"]) == "linear-mse-lr0.001-bs10-adam-s0"
    assert run_name(cfgs["optim.momentum=0.9"]) == "linear-mse-lr0.03-bs10-mom0.9-s0"
    assert run_name(cfgs[""]) == "linear-mse-lr0.03-bs10-s0"
    # hyperparameters show when they differ from their optimiser's own file
    assert run_name(compose_cfg("optim=adagrad")) == "linear-mse-lr0.01-bs10-adagrad-s0"
    assert run_name(compose_cfg("optim=adam", "optim.beta2=0.99")).endswith("-adam-beta20.99-s0")
