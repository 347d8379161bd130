"""Every loss of the project, in one place, in the three forms the training steps need.

- ``per_sample(cfg)``: hand-written per-sample losses for the d2l 3.2 scratch step (d2l's
  ``squared_loss`` and its siblings), reduced by :func:`reduce`.
- ``nn_loss(cfg)``: PyTorch's own modules for the d2l 3.3 step (``nn.MSELoss``,
  ``nn.HuberLoss``, ``nn.L1Loss``, ``nn.SmoothL1Loss``; :data:`NN_LOSSES`): the point of that
  step is to compare them against the hand-written ones.
- :class:`ClampForm`: the closed form the stacked step differentiates by hand. With
  c = clamp(r, -δ, δ), c·(r − c/2) is r²/2 inside |r| < δ and δ(|r| − δ/2) beyond: Huber; with
  δ = ∞ it is d2l's r²/2, twice that is MSE, and 1/δ times Huber(δ) is SmoothL1 with β = δ.
  L1 is the limit δ → 0 of Huber(δ)/δ: c = sign(r) and c·r = |r|. So every loss is
  coef·c·(r − h·c) with h = ½ (h = 0 for L1), its derivative in r is coef·c, and the reduction
  is a per-model scale.

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


def l1_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|y_hat - y|; autograd's gradient of abs at 0 is 0, as nn.L1Loss's is."""
    return (y_hat - y.reshape(y_hat.shape)).abs()


def smooth_l1_loss(y_hat: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """PyTorch's SmoothL1, per sample: r^2/(2 beta) inside |r| < beta, |r| - beta/2 outside."""
    r = (y_hat - y.reshape(y_hat.shape)).abs()
    return torch.where(r < beta, 0.5 * r**2 / beta, r - 0.5 * beta)


def per_sample(cfg: DictConfig) -> PerSample:
    name, delta = LossName(cfg.loss.name), float(cfg.loss.delta)
    if name == LossName.huber:
        return lambda y_hat, y: huber_loss(y_hat, y, delta)
    if name == LossName.smooth_l1:
        return lambda y_hat, y: smooth_l1_loss(y_hat, y, delta)
    return {LossName.squared: squared_loss, LossName.mse: mse_loss, LossName.l1: l1_loss}[name]


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


# the nn module of each loss (the report's catalogue of PyTorch's losses marks these as trained
# here), and the keyword it takes loss.delta as
NN_LOSSES: dict[LossName, type[nn.Module]] = {
    LossName.squared: HalfMSELoss,
    LossName.mse: nn.MSELoss,
    LossName.huber: nn.HuberLoss,
    LossName.l1: nn.L1Loss,
    LossName.smooth_l1: nn.SmoothL1Loss,
}
DELTA_KEYWORD = {LossName.huber: "delta", LossName.smooth_l1: "beta"}


def nn_loss(cfg: DictConfig) -> nn.Module:
    reduction = Reduction(cfg.loss.reduction)
    torch_reduction = "sum" if reduction == Reduction.nominal else reduction.value
    name = LossName(cfg.loss.name)
    threshold = {DELTA_KEYWORD[name]: float(cfg.loss.delta)} if name in DELTA_KEYWORD else {}
    loss = NN_LOSSES[name](reduction=torch_reduction, **threshold)
    return NominalMean(loss, int(cfg.train.batch_size)) if reduction == Reduction.nominal else loss


# --- the stacked step: closed form of K losses at once -----------------------------------------


# the losses whose clamp bound is loss.delta (the others: ∞)
_CLAMPED = frozenset({LossName.huber, LossName.smooth_l1})


def _coef(name: LossName, delta: float) -> float:
    return {LossName.mse: 2.0, LossName.smooth_l1: 1.0 / delta}.get(name, 1.0)


class ClampForm:
    """K per-sample losses as ``coef · c·(r − h·c)``, c = clamp(r, −δ, δ) (sign(r) for L1,
    with h = 0; else h = ½); see the module doc."""

    def __init__(self, cfgs: Sequence[DictConfig], dtype: torch.dtype):
        names = [LossName(c.loss.name) for c in cfgs]
        if not STACKABLE.issuperset(names):
            raise ValueError(f"no closed form for loss {sorted(set(names) - STACKABLE)}")
        deltas = [float(c.loss.delta) for c in cfgs]
        self.delta = torch.tensor(
            [d if n in _CLAMPED else math.inf for d, n in zip(deltas, names, strict=True)],
            dtype=dtype,
        )
        self.neg_delta = -self.delta
        self.coef = torch.tensor(
            [_coef(n, d) for n, d in zip(names, deltas, strict=True)], dtype=dtype
        )
        # L1 columns (None when there are none: the other groups pay nothing for them)
        l1 = torch.tensor([n == LossName.l1 for n in names])
        self.sign = l1 if bool(l1.any()) else None
        self.half = None if self.sign is None else torch.where(l1, 0.0, 0.5).to(dtype)
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
        """c, the derivative of each per-sample loss in r over coef: (len, K)."""
        c = torch.clamp(r, min=self.neg_delta, max=self.delta)
        return c if self.sign is None else torch.where(self.sign, torch.sign(r), c)

    def rest(self, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """r − h·c: c times it is each per-sample loss over coef."""
        return torch.add(r, c, alpha=-0.5) if self.half is None else r - self.half * c

    def value(self, r: torch.Tensor) -> torch.Tensor:
        """The reduced loss of every model, (K,), from residuals r of shape (len, K); the
        nominal reduction of the full data divides by n, like a mean."""
        c = self.clamp(r)
        one = torch.ones((), dtype=self.dtype)
        scale = self.coef * torch.where(self.mean | self.nominal, one / len(r), one)
        return scale * (c * self.rest(r, c)).sum(0)
