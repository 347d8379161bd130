"""Every loss of the project, in one place, in the three forms the training steps need.

- ``per_sample(cfg)``: hand-written per-sample losses for the d2l 3.2 scratch step (d2l's
  ``squared_loss`` and its siblings), reduced by :func:`reduce`.
- ``nn_loss(cfg)``: PyTorch's own modules for the d2l 3.3 step (``nn.MSELoss``,
  ``nn.HuberLoss``): the point of that step is to compare them against the hand-written ones.
- :class:`ClampForm`: the closed form the stacked step differentiates by hand. With
  c = clamp(r, -δ, δ), c·(r − c/2) is r²/2 inside |r| < δ and δ(|r| − δ/2) beyond: Huber; with
  δ = ∞ it is d2l's r²/2, and twice that is MSE. Its derivative in r is coef·c, so one clamp
  serves all three losses and the reduction is a per-model scale.

A loss added here without a closed form is simply absent from ``STACKABLE``
(:mod:`pipeline.engines`, torch-free: planning a sweep reads it): the stacked
engine then refuses it (``train.engine=stacked``) or the job trains with its d2l step
(``train.engine=auto``), and the run's ``engine`` tag says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.config import LossName, Reduction
from pipeline.engines import STACKABLE

PerSample = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- d2l 3.2: written by hand -----------------------------------------------------------------


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d2l's squared loss, per sample: (y_hat - y)^2 / 2."""
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


def mse_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y_hat - y.reshape(y_hat.shape)) ** 2


def huber_loss(y_hat: torch.Tensor, y: torch.Tensor, delta: float) -> torch.Tensor:
    """PyTorch's Huber, per sample: r^2/2 inside |r| < delta, delta(|r| - delta/2) outside."""
    r = (y_hat - y.reshape(y_hat.shape)).abs()
    return torch.where(r < delta, 0.5 * r**2, delta * (r - 0.5 * delta))


def per_sample(cfg: DictConfig) -> PerSample:
    name, delta = LossName(cfg.loss.name), float(cfg.loss.delta)
    if name == LossName.huber:
        return lambda y_hat, y: huber_loss(y_hat, y, delta)
    return {LossName.squared: squared_loss, LossName.mse: mse_loss}[name]


def reduce(losses: torch.Tensor, reduction: Reduction, batch_size: int) -> torch.Tensor:
    """mean divides by the real batch length; nominal by the configured batch size, as d2l
    3.2's ``sgd(params, lr, batch_size)`` does, which shrinks the step of a partial last batch
    (exercise 3.2.7); sum does not divide."""
    if reduction == Reduction.mean:
        return losses.mean()
    return losses.sum() / batch_size if reduction == Reduction.nominal else losses.sum()


# --- d2l 3.3: PyTorch's modules ---------------------------------------------------------------


class HalfMSELoss(nn.MSELoss):
    """nn.MSELoss / 2: d2l's squared loss for the concise model (PyTorch has none)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(input, target) / 2


class NominalMean(nn.Module):
    """A summed ``nn`` loss divided by the configured batch size (d2l 3.2's sgd)."""

    def __init__(self, summed: nn.Module, batch_size: int):
        super().__init__()
        self.summed, self.batch_size = summed, batch_size

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.summed(input, target) / self.batch_size


def nn_loss(cfg: DictConfig) -> nn.Module:
    reduction = Reduction(cfg.loss.reduction)
    torch_reduction = "sum" if reduction == Reduction.nominal else reduction.value
    name = LossName(cfg.loss.name)
    if name == LossName.huber:
        loss: nn.Module = nn.HuberLoss(reduction=torch_reduction, delta=float(cfg.loss.delta))
    else:
        loss = {LossName.squared: HalfMSELoss, LossName.mse: nn.MSELoss}[name](
            reduction=torch_reduction
        )
    return NominalMean(loss, int(cfg.train.batch_size)) if reduction == Reduction.nominal else loss


# --- the stacked step: closed form of K losses at once -----------------------------------------


class ClampForm:
    """K per-sample losses as ``coef · c·(r − c/2)``, c = clamp(r, −δ, δ); see the module doc."""

    def __init__(self, cfgs: Sequence[DictConfig], dtype: torch.dtype):
        names = [LossName(c.loss.name) for c in cfgs]
        if not STACKABLE.issuperset(names):
            raise ValueError(f"no closed form for loss {sorted(set(names) - STACKABLE)}")
        self.delta = torch.tensor(
            [
                float(c.loss.delta) if n == LossName.huber else math.inf
                for c, n in zip(cfgs, names, strict=True)
            ],
            dtype=dtype,
        )
        self.neg_delta = -self.delta
        self.coef = torch.tensor([2.0 if n == LossName.mse else 1.0 for n in names], dtype=dtype)
        self.mean = torch.tensor([Reduction(c.loss.reduction) == Reduction.mean for c in cfgs])
        # nominal: divided by the configured B (one per group: configs stack by batch size)
        self.nominal = torch.tensor(
            [Reduction(c.loss.reduction) == Reduction.nominal for c in cfgs]
        )
        self.batch_size = int(cfgs[0].train.batch_size)
        self.dtype = dtype
        self._scales: dict[int, torch.Tensor] = {}

    def scale(self, batch_len: int) -> torch.Tensor:
        """coef/len for a mean reduction (the real length of a partial batch), coef/B for the
        nominal one, coef for a sum."""
        if batch_len not in self._scales:
            one = torch.ones((), dtype=self.dtype)  # python floats would make where() float32
            per = torch.where(self.nominal, one / self.batch_size, one)
            self._scales[batch_len] = self.coef * torch.where(self.mean, one / batch_len, per)
        return self._scales[batch_len]

    def clamp(self, r: torch.Tensor) -> torch.Tensor:
        return torch.clamp(r, min=self.neg_delta, max=self.delta)

    def value(self, r: torch.Tensor) -> torch.Tensor:
        """The reduced loss of every model, (K,), from residuals r of shape (len, K); the
        nominal reduction of the full data divides by n, like a mean."""
        c = self.clamp(r)
        one = torch.ones((), dtype=self.dtype)
        scale = self.coef * torch.where(self.mean | self.nominal, one / len(r), one)
        return scale * (c * (r - 0.5 * c)).sum(0)
