"""Stacked training: K configs that share data and batch schedule, trained as one computation.

Configs with the same data, seed, batch size, epochs, drop_last, dtype and log_every see the
same data and the same batches (the generators are seeded from ``seed``), so their K models
can step together: weights ``W`` (K, d) and biases ``b`` (K,), one matmul per batch for all
of them, each with its own lr, loss (squared / mse / huber and its delta), reduction and
initial weights. ``scratch`` and ``linear`` compute the same function, so they stack too.

Gradients are the closed forms of the per-sample losses (d/dr of r²/2, r², Huber), which is
what autograd computes for these models; the result matches :func:`pipeline.train.train`
run by run (tested to 1e-5 relative on every logged number, divergence included). Like the
rest of training, this knows nothing about MLflow: it returns one History per config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config import LossName, Reduction
from pipeline.data import make_generators, ols
from pipeline.train import (
    EPOCH_METRICS,
    History,
    data_iter,
    divergence_limit,
    init_params,
    make_problem,
    torch_dtype,
)


def schedule_key(cfg: DictConfig) -> str:
    """Configs with equal keys share data and batch order, so they can be stacked."""
    t = cfg.train
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return json.dumps(
        [data, cfg.seed, t.batch_size, t.epochs, t.drop_last, t.dtype.value, t.log_every],
        sort_keys=True,
    )


def group_by_schedule(cfgs: Sequence[DictConfig]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(schedule_key(cfg), []).append(i)
    return list(groups.values())


class _Losses:
    """Per-model loss, its derivative in the residual, and reduction scale, as (K,) vectors."""

    def __init__(self, cfgs: Sequence[DictConfig], dtype: torch.dtype):
        names = [c.loss.name for c in cfgs]
        self.squared = torch.tensor([n == LossName.squared for n in names])
        self.mse = torch.tensor([n == LossName.mse for n in names])
        self.delta = torch.tensor([c.loss.delta for c in cfgs], dtype=dtype)
        self.mean = torch.tensor([c.loss.reduction == Reduction.mean for c in cfgs])

    def per_sample(self, r: torch.Tensor) -> torch.Tensor:
        a = r.abs()
        huber = torch.where(a < self.delta, 0.5 * r**2, self.delta * (a - 0.5 * self.delta))
        return torch.where(self.squared, r**2 / 2, torch.where(self.mse, r**2, huber))

    def d_per_sample(self, r: torch.Tensor) -> torch.Tensor:
        huber = torch.where(r.abs() < self.delta, r, self.delta * r.sign())
        return torch.where(self.squared, r, torch.where(self.mse, 2 * r, huber))

    def scale(self, batch_len: int, dtype: torch.dtype) -> torch.Tensor:
        """1/len for a mean reduction (the real length of a partial batch), 1 for a sum."""
        one = torch.ones((), dtype=dtype)  # python floats would make where() float32
        return torch.where(self.mean, one / batch_len, one)


def train_stacked(cfgs: Sequence[DictConfig]) -> list[History]:
    """Train configs that share a schedule (see :func:`schedule_key`) side by side."""
    if len({schedule_key(c) for c in cfgs}) != 1:
        raise ValueError("train_stacked needs configs with one schedule: group_by_schedule")
    first = cfgs[0]
    K, dtype = len(cfgs), torch_dtype(first)
    gens = make_generators(first.seed)
    p = make_problem(first, gens)
    d = len(p.true_w)
    # each config draws its own initial weights from a fresh init stream, as train() does
    inits = [init_params(c, d, make_generators(c.seed).init) for c in cfgs]
    W = torch.stack([w for w, _ in inits])  # (K, d)
    b = torch.stack([b0 for _, b0 in inits])  # (K,)
    lr = torch.tensor([c.optim.lr for c in cfgs], dtype=dtype)
    losses = _Losses(cfgs, dtype)
    hists = [History() for _ in cfgs]
    active = torch.ones(K, dtype=torch.bool)
    updates = torch.zeros(K, dtype=torch.long)
    log_steps: list[int] = []
    log_loss: list[torch.Tensor] = []
    log_norm: list[torch.Tensor] = []
    log_active: list[torch.Tensor] = []

    def record() -> None:
        """Full-data metrics of the active models; a non-finite one ends that model."""
        r = p.X @ W.T + b - p.y  # (n, K)
        metrics = {
            "train_loss": losses.scale(len(p.X), dtype) * losses.per_sample(r).sum(0),
            "mse": (r**2).mean(0),
            "w_error": torch.linalg.vector_norm(W - p.true_w, dim=1),
            "b_error": (b - p.true_b).abs(),
        }
        table = torch.stack([metrics[k] for k in EPOCH_METRICS], dim=1).tolist()
        for k in torch.nonzero(active).flatten().tolist():
            if not all(math.isfinite(v) for v in table[k]):
                hists[k].diverged_at_step = max(int(updates[k]), 1)
                active[k] = False
                continue
            for key, value in zip(EPOCH_METRICS, table[k], strict=True):
                hists[k].epochs[key].append(value)

    record()
    limit = torch.tensor(
        [
            divergence_limit(c, h.epochs["train_loss"][0] if h.epochs["train_loss"] else math.inf)
            for c, h in zip(cfgs, hists, strict=True)
        ],
        dtype=dtype,
    )
    t = first.train
    step = 0
    for _ in range(t.epochs):
        if not active.any():
            break
        for X, y in data_iter(t.batch_size, p.X, p.y, gens.batches, t.drop_last):
            step += 1
            r = X @ W.T + b - y  # (B, K)
            scale = losses.scale(len(X), dtype)
            batch_loss = scale * losses.per_sample(r).sum(0)
            exploded = active & ~(batch_loss <= limit)  # `not <=` also catches nan
            if exploded.any():
                for k in torch.nonzero(exploded).flatten().tolist():
                    hists[k].diverged_at_step = step
                active &= ~exploded
            g = scale * losses.d_per_sample(r)  # dLoss/dprediction, (B, K)
            grad_W, grad_b = g.T @ X, g.sum(0)
            norm = torch.sqrt((grad_W**2).sum(1) + grad_b**2)
            # where(), not a masked multiply: a frozen model may hold inf, and 0 * inf = nan
            W = torch.where(active[:, None], W - lr[:, None] * grad_W, W)
            b = torch.where(active, b - lr * grad_b, b)
            updates += active
            if step % t.log_every == 0:
                log_steps.append(step)
                log_loss.append(batch_loss)
                log_norm.append(norm)
                log_active.append(active.clone())
            if not active.any():
                break
        if active.any():
            record()

    if log_steps:
        loss_t, norm_t = torch.stack(log_loss, 1).tolist(), torch.stack(log_norm, 1).tolist()
        alive = torch.stack(log_active, 1).tolist()
        for k, h in enumerate(hists):
            keep = [i for i, on in enumerate(alive[k]) if on]
            h.steps = [log_steps[i] for i in keep]
            h.batch_loss = [loss_t[k][i] for i in keep]
            h.grad_norm = [norm_t[k][i] for i in keep]
    w_ols, b_ols = ols(p.X, p.y)
    ols_w = float(torch.linalg.vector_norm(p.true_w - w_ols))
    ols_b = abs(p.true_b - float(b_ols))
    for k, h in enumerate(hists):
        h.updates = int(updates[k])
        h.w_hat, h.b_hat = W[k].tolist(), float(b[k])
        h.ols_w_error, h.ols_b_error = ols_w, ols_b
    return hists
