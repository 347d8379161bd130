"""Training: d2l 3.2 (from scratch) and 3.3 (concise) linear regression, side by side.

Nothing here knows about MLflow or printing: :func:`train` returns a :class:`History` and calls
an optional ``on_epoch`` hook, and the job (``pipeline.job``) decides what to do with both.

Both models draw the same data, initial weights and batch order from the same generators, so
with the same loss, reduction and lr their trajectories agree to floating-point tolerance; the
tests use that to prove the scratch code against PyTorch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils import data

from pipeline.config import InitName, LossName, ModelName, Reduction
from pipeline.data import Generators, make_generators, ols, synthetic_data

Batch = tuple[torch.Tensor, torch.Tensor]
EPOCH_METRICS = ("train_loss", "mse", "w_error", "b_error")


@dataclass
class Problem:
    """The data of one job and the truth it was drawn from."""

    X: torch.Tensor
    y: torch.Tensor
    true_w: torch.Tensor
    true_b: float


@dataclass
class History:
    """Everything a job measured; plain Python numbers, ready to log."""

    epochs: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in EPOCH_METRICS})
    steps: list[int] = field(default_factory=list)  # global update step of each entry below
    batch_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    updates: int = 0  # optimiser steps taken
    diverged_at_step: int | None = None  # first update whose loss was nan/inf or exploded
    w_hat: list[float] = field(default_factory=list)
    b_hat: float = math.nan
    ols_w_error: float = math.nan
    ols_b_error: float = math.nan

    @property
    def diverged(self) -> bool:
        return self.diverged_at_step is not None

    @property
    def final_mse(self) -> float:
        """What the job returns to a sweeper: inf, never NaN, for a diverged run."""
        return math.inf if self.diverged else self.epochs["mse"][-1]


# --- losses written by hand (d2l 3.2) ---------------------------------------------------------


def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d2l's squared loss, per sample: (y_hat - y)^2 / 2."""
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


def mse_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y_hat - y.reshape(y_hat.shape)) ** 2


def huber_loss(y_hat: torch.Tensor, y: torch.Tensor, delta: float) -> torch.Tensor:
    """PyTorch's Huber, per sample: r^2/2 inside |r| < delta, delta(|r| - delta/2) outside."""
    r = (y_hat - y.reshape(y_hat.shape)).abs()
    return torch.where(r < delta, 0.5 * r**2, delta * (r - 0.5 * delta))


def reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    # mean divides by the real batch length: d2l's sgd divides by the nominal batch size, which
    # over-shrinks the last partial batch (exercise 3.2.7).
    return per_sample.mean() if reduction == Reduction.mean else per_sample.sum()


class HalfMSELoss(nn.MSELoss):
    """nn.MSELoss / 2: d2l's squared loss for the concise model."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(input, target) / 2


# --- the two models ---------------------------------------------------------------------------


class Model(Protocol):
    def batches(self, X: torch.Tensor, y: torch.Tensor) -> Iterator[Batch]: ...
    def loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...
    def step(self, loss: torch.Tensor) -> torch.Tensor: ...
    def params(self) -> tuple[torch.Tensor, torch.Tensor]: ...


def data_iter(
    batch_size: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    gen: torch.Generator,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """d2l's data_iter with a seeded permutation (the DataLoader's order too) and drop_last."""
    n = len(features)
    indices = torch.randperm(n, generator=gen)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        batch = indices[i : i + batch_size]
        yield features[batch], labels[batch]


def sgd(params: list[torch.Tensor], lr: float) -> None:
    """Minibatch SGD on the gradient of the already reduced loss (no division by batch size)."""
    with torch.no_grad():
        for param in params:
            assert param.grad is not None
            param -= lr * param.grad
            param.grad.zero_()


def _grad_norm(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖(∇w, ∇b)‖₂ in three small ops (clip_grad's total norm costs several times more)."""
    assert w.grad is not None and b.grad is not None
    return torch.hypot(torch.linalg.vector_norm(w.grad), torch.linalg.vector_norm(b.grad))


class EpochBatchSampler(data.Sampler[torch.Tensor]):
    """Index tensors of one shuffled epoch: the same single randperm per epoch as data_iter
    (RandomSampler draws a second, empty one at the end, so the two streams would drift)."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, gen: torch.Generator):
        self.n, self.batch_size, self.drop_last, self.gen = n, batch_size, drop_last, gen

    def __iter__(self) -> Iterator[torch.Tensor]:
        stop = self.n - self.n % self.batch_size if self.drop_last else self.n
        return iter(torch.randperm(self.n, generator=self.gen)[:stop].split(self.batch_size))

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


class ScratchModel:
    """d2l 3.2: raw tensors, linreg, hand-written loss, data_iter and sgd."""

    def __init__(self, w0: torch.Tensor, b0: torch.Tensor, cfg: DictConfig, gen: torch.Generator):
        self.w = w0.reshape(-1, 1).clone().requires_grad_(True)
        self.b = b0.reshape(1).clone().requires_grad_(True)
        self.cfg, self.gen = cfg, gen
        # plain copies: reading a DictConfig on every update costs more than the update
        self.lr, self.reduction = float(cfg.optim.lr), Reduction(cfg.loss.reduction)
        name, delta = cfg.loss.name, cfg.loss.delta
        self.per_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = {
            LossName.squared: squared_loss,
            LossName.mse: mse_loss,
            LossName.huber: lambda y_hat, y: huber_loss(y_hat, y, delta),
        }[name]

    def batches(self, X: torch.Tensor, y: torch.Tensor) -> Iterator[Batch]:
        t = self.cfg.train
        return data_iter(t.batch_size, X, y, self.gen, t.drop_last)

    def loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return reduce(self.per_sample(X @ self.w + self.b, y), self.reduction)

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        loss.backward()
        norm = _grad_norm(self.w, self.b)
        sgd([self.w, self.b], self.lr)
        return norm

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w.detach().reshape(-1), self.b.detach().reshape(())


class LinearModel:
    """d2l 3.3: nn.Sequential(nn.Linear), DataLoader(TensorDataset), nn losses, optim.SGD."""

    def __init__(self, w0: torch.Tensor, b0: torch.Tensor, cfg: DictConfig, gen: torch.Generator):
        d = len(w0)
        self.layer = nn.Linear(d, 1, dtype=w0.dtype)
        self.net = nn.Sequential(self.layer)
        with torch.no_grad():
            self.layer.weight.copy_(w0.reshape(1, d))
            self.layer.bias.copy_(b0.reshape(1))
        self.cfg, self.gen = cfg, gen
        reduction = cfg.loss.reduction.value
        self.loss_fn: nn.Module = {
            LossName.squared: lambda: HalfMSELoss(reduction=reduction),
            LossName.mse: lambda: nn.MSELoss(reduction=reduction),
            LossName.huber: lambda: nn.HuberLoss(reduction=reduction, delta=cfg.loss.delta),
        }[cfg.loss.name]()
        self.trainer = torch.optim.SGD(self.net.parameters(), lr=cfg.optim.lr)

    def batches(self, X: torch.Tensor, y: torch.Tensor) -> Iterator[Batch]:
        # A batch sampler with batch_size=None hands TensorDataset a whole index tensor at once:
        # one gather per batch instead of d2l's per-sample collation.
        t = self.cfg.train
        sampler = EpochBatchSampler(len(X), t.batch_size, t.drop_last, self.gen)
        dataset = data.TensorDataset(X, y)
        return iter(data.DataLoader(dataset, sampler=sampler, batch_size=None))

    def loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.net(X), y)

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        self.trainer.zero_grad()
        loss.backward()
        norm = _grad_norm(self.layer.weight, self.layer.bias)
        self.trainer.step()
        return norm

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer.weight.detach().reshape(-1), self.layer.bias.detach().reshape(())


MODELS: dict[ModelName, type[ScratchModel] | type[LinearModel]] = {
    ModelName.scratch: ScratchModel,
    ModelName.linear: LinearModel,
}


# --- set-up and the loop ----------------------------------------------------------------------


def torch_dtype(cfg: DictConfig) -> torch.dtype:
    return getattr(torch, cfg.train.dtype.value)


def make_problem(cfg: DictConfig, gens: Generators) -> Problem:
    d = cfg.data
    true_w = torch.tensor(list(d.true_w), dtype=torch_dtype(cfg))
    X, y = synthetic_data(
        true_w, d.true_b, d.n, d.noise, gens.data, d.outliers.fraction, d.outliers.scale
    )
    return Problem(X, y, true_w, float(d.true_b))


def init_params(cfg: DictConfig, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (w, b), drawn once so that both models start from the same point."""
    w = torch.zeros(1, d, dtype=torch_dtype(cfg))  # nn.Linear's (out, in) layout for fan-in/out
    if cfg.init.name == InitName.normal:
        nn.init.normal_(w, 0.0, cfg.init.std, generator=gen)
    elif cfg.init.name == InitName.xavier:
        nn.init.xavier_uniform_(w, gain=cfg.init.gain, generator=gen)
    return w.reshape(-1), torch.zeros((), dtype=w.dtype)


def evaluate(model: Model, p: Problem) -> dict[str, float]:
    """Full-data metrics: the run's own loss (what d2l prints) and the loss-independent ones."""
    with torch.no_grad():
        w, b = model.params()
        residual = p.X @ w + b - p.y.reshape(-1)
        return {
            "train_loss": float(model.loss(p.X, p.y)),
            "mse": float((residual**2).mean()),
            "w_error": float(torch.linalg.vector_norm(p.true_w - w)),
            "b_error": abs(p.true_b - float(b)),
        }


def divergence_limit(cfg: DictConfig, initial_loss: float) -> float:
    """In float64 an exploding loss takes many updates to overflow: a batch loss above
    divergence_ratio times the starting loss (on a scale of at least 1) counts as diverged."""
    return float(cfg.train.divergence_ratio * max(initial_loss, 1.0))


def train_epoch(
    model: Model,
    p: Problem,
    hist: History,
    log_every: int,
    limit: float,
    norms: list[torch.Tensor],
) -> bool:
    """One pass over the data; False as soon as a batch loss is nan/inf or above ``limit``
    (the run diverged: the update is not taken). Gradient norms are collected as tensors in
    ``norms`` and converted once at the end (a float() per update costs a sync each)."""
    for X, y in model.batches(p.X, p.y):
        loss = model.loss(X, y)
        step = hist.updates + 1
        value = float(loss.detach())
        if not value <= limit:  # also catches nan
            hist.diverged_at_step = step
            return False
        norm = model.step(loss)
        hist.updates = step
        if step % log_every == 0:
            hist.steps.append(step)
            hist.batch_loss.append(value)
            norms.append(norm)
    return True


def train(
    cfg: DictConfig, on_epoch: Callable[[int, dict[str, float]], None] | None = None
) -> History:
    """Train one config from its seed; deterministic on CPU for a given config."""
    gens = make_generators(cfg.seed)
    p = make_problem(cfg, gens)
    w0, b0 = init_params(cfg, len(p.true_w), gens.init)
    model: Model = MODELS[cfg.model.name](w0, b0, cfg, gens.batches)
    hist = History()

    def record(epoch: int) -> bool:
        metrics = evaluate(model, p)
        if not all(math.isfinite(v) for v in metrics.values()):
            hist.diverged_at_step = max(hist.updates, 1)
            return False
        for k, v in metrics.items():
            hist.epochs[k].append(v)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        return True

    norms: list[torch.Tensor] = []
    if record(0):
        limit = divergence_limit(cfg, hist.epochs["train_loss"][0])
        for epoch in range(1, cfg.train.epochs + 1):
            if not (
                train_epoch(model, p, hist, cfg.train.log_every, limit, norms) and record(epoch)
            ):
                break
    hist.grad_norm = torch.stack(norms).tolist() if norms else []

    w, b = model.params()
    hist.w_hat, hist.b_hat = [float(v) for v in w], float(b)
    w_ols, b_ols = ols(p.X, p.y)
    hist.ols_w_error = float(torch.linalg.vector_norm(p.true_w - w_ols))
    hist.ols_b_error = abs(p.true_b - float(b_ols))
    return hist
