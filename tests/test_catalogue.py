"""The catalogue of PyTorch's losses and initialisers: introspected, probed by a stated rule,
and marked trained exactly where the training code uses them."""

from __future__ import annotations

from torch import nn

from pipeline import catalogue
from pipeline.config import InitName, LossName
from pipeline.losses import NN_LOSSES
from pipeline.train import TORCH_INITS


def test_the_regression_losses_are_found_by_behaviour() -> None:
    losses = {e.name: e for e in catalogue.losses()}
    assert {"MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss", "BCELoss"} <= set(losses)
    assert "NLLLoss2d" not in losses  # a deprecated alias
    regression = {name for name, e in losses.items() if e.regression}
    assert regression == {"MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "GaussianNLLLoss"}
    assert losses["GaussianNLLLoss"].extra == "var"  # its variance input, set to ones
    # every trained loss is a regression loss, and every LossName is marked somewhere
    trained = {name for name, e in losses.items() if e.trained_here}
    assert trained == {"MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss"} <= regression
    configs = "; ".join(e.config for e in losses.values())
    assert all(f"loss={name.value}" in configs for name in LossName)
    assert "loss=smooth_l1 (loss.delta = beta)" in losses["SmoothL1Loss"].config


def test_the_probe_rejects_what_predicting_the_target_does_not_minimise() -> None:
    assert catalogue.regression_probe(nn.MSELoss)[0]
    assert not catalogue.regression_probe(nn.BCEWithLogitsLoss)[0]  # minimised elsewhere
    assert not catalogue.regression_probe(nn.CrossEntropyLoss)[0]  # flat in one class
    assert not catalogue.regression_probe(nn.NLLLoss)[0]  # raises on a real target
    assert catalogue.regression_probe(NN_LOSSES[LossName.squared])[0]  # d2l's ½-squared


def test_inits_apply_to_a_one_output_weight_and_the_trained_ones_are_marked() -> None:
    inits = {e.name: e for e in catalogue.inits()}
    assert "normal" not in inits and "normal_" in inits  # deprecated forms left out
    assert not inits["dirac_"].regression  # needs a 3-5 dimensional weight
    assert inits["kaiming_uniform_"].regression and inits["constant_"].extra == "val"
    assert {e.config for e in inits.values() if e.trained_here} == {
        f"init={name.value}" for name in InitName
    }
    assert {name: fn.__name__ for name, fn in TORCH_INITS.items()}[InitName.kaiming] == (
        "kaiming_normal_"
    )
