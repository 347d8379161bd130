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

import bisect
import json
import math
from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config import LossName, Reduction
from pipeline.data import make_generators, ols, with_bias_column
from pipeline.train import (
    EPOCH_METRICS,
    History,
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
    """Every model's per-sample loss as one formula. With c = clamp(r, -δ, δ):
        c·(r - c/2) = r²/2 for |r| < δ, and δ(|r| - δ/2) beyond: Huber; with δ = ∞ it is
        d2l's r²/2, and twice that is MSE. Its derivative in r is coef·c.
    So one clamp serves all three losses, and the reduction is a per-model scale."""

    def __init__(self, cfgs: Sequence[DictConfig], dtype: torch.dtype):
        huber = [c.loss.name == LossName.huber for c in cfgs]
        self.delta = torch.tensor(
            [c.loss.delta if h else math.inf for c, h in zip(cfgs, huber, strict=True)], dtype=dtype
        )
        self.neg_delta = -self.delta
        self.coef = torch.tensor(
            [2.0 if c.loss.name == LossName.mse else 1.0 for c in cfgs], dtype=dtype
        )
        self.mean = torch.tensor([c.loss.reduction == Reduction.mean for c in cfgs])
        self.dtype = dtype
        self._scales: dict[int, torch.Tensor] = {}

    def scale(self, batch_len: int) -> torch.Tensor:
        """coef/len for a mean reduction (the real length of a partial batch), coef for a sum."""
        if batch_len not in self._scales:
            one = torch.ones((), dtype=self.dtype)  # python floats would make where() float32
            self._scales[batch_len] = self.coef * torch.where(self.mean, one / batch_len, one)
        return self._scales[batch_len]

    def clamp(self, r: torch.Tensor) -> torch.Tensor:
        return torch.clamp(r, min=self.neg_delta, max=self.delta)


def train_stacked(cfgs: Sequence[DictConfig]) -> list[History]:
    """Train configs that share a schedule (see :func:`schedule_key`) side by side."""
    if len({schedule_key(c) for c in cfgs}) != 1:
        raise ValueError("train_stacked needs configs with one schedule: group_by_schedule")
    first = cfgs[0]
    K, dtype = len(cfgs), torch_dtype(first)
    gens = make_generators(first.seed)
    p = make_problem(first, gens)
    n, d = p.X.shape
    A = with_bias_column(p.X)  # theta = [w, b]
    y = p.y.reshape(-1, 1)
    # each config draws its own initial weights from a fresh init stream, as train() does
    inits = [init_params(c, d, make_generators(c.seed).init) for c in cfgs]
    theta = torch.stack([torch.cat([w, b.reshape(1)]) for w, b in inits])  # (K, d+1)
    neg_lr = -torch.tensor([c.optim.lr for c in cfgs], dtype=dtype)[:, None]
    losses = _Losses(cfgs, dtype)
    hists = [History() for _ in cfgs]
    frozen: dict[int, torch.Tensor] = {}  # model -> its parameters when it diverged
    updates = [0] * K
    log_steps: list[int] = []
    log_loss: list[torch.Tensor] = []
    log_grad: list[torch.Tensor] = []  # norms taken once at the end

    def freeze(k: int, at_step: int, taken: int) -> None:
        """Model k diverged: keep its parameters as they were, and let it ride along with
        lr 0 and no loss limit, so the hot loop never needs a mask."""
        hists[k].diverged_at_step, updates[k] = at_step, taken
        frozen[k] = theta[k].clone()
        alive.discard(k)
        neg_lr[k], limit[k] = 0.0, math.inf

    def record(step: int) -> None:
        """Full-data metrics of the live models; a non-finite one ends that model."""
        r = A @ theta.T - y  # (n, K)
        c = losses.clamp(r)
        metrics = {
            "train_loss": losses.scale(n) * (c * (r - 0.5 * c)).sum(0),
            "mse": (r**2).mean(0),
            "w_error": torch.linalg.vector_norm(theta[:, :d] - p.true_w, dim=1),
            "b_error": (theta[:, d] - p.true_b).abs(),
        }
        table = torch.stack([metrics[k] for k in EPOCH_METRICS], dim=1).tolist()
        for k in sorted(alive):
            if not all(math.isfinite(v) for v in table[k]):
                freeze(k, max(step, 1), step)
                continue
            for key, value in zip(EPOCH_METRICS, table[k], strict=True):
                hists[k].epochs[key].append(value)

    alive = set(range(K))
    limit = torch.full((K,), math.inf, dtype=dtype)
    record(0)
    for k in alive:
        limit[k] = divergence_limit(cfgs[k], hists[k].epochs["train_loss"][0])
    # plain values: a DictConfig read per update would cost more than the update
    epochs, batch_size = int(first.train.epochs), int(first.train.batch_size)
    stop = n - n % batch_size if first.train.drop_last else n
    log_every = int(first.train.log_every)
    scales = {b: losses.scale(b) for b in (batch_size, n % batch_size or batch_size)}
    delta, neg_delta = losses.delta, losses.neg_delta
    step = 0
    for _ in range(epochs):
        if not alive:
            break
        # data_iter's order (one randperm per epoch), gathered once: batches are then views
        perm = torch.randperm(n, generator=gens.batches)
        A_epoch, neg_y_epoch = A[perm], -y[perm]
        for i in range(0, stop, batch_size):
            Ab, neg_yb = A_epoch[i : i + batch_size], neg_y_epoch[i : i + batch_size]
            step += 1
            r = torch.addmm(neg_yb, Ab, theta.T)  # residuals (B, K)
            c = torch.clamp(r, min=neg_delta, max=delta)
            sc = scales[len(Ab)] * c  # dLoss/dprediction
            batch_loss = torch.linalg.vecdot(sc, torch.add(r, c, alpha=-0.5), dim=0)
            # a model stops at its first exploding loss, before that update (`not <=`: nan)
            ok = batch_loss <= limit
            if not ok.all():
                for k in torch.nonzero(~ok).flatten().tolist():
                    if k in alive:
                        freeze(k, step, step - 1)
            grad = sc.T @ Ab  # (K, d+1): [∇w, ∇b] of every model at once
            theta = torch.addcmul(theta, neg_lr, grad)
            if step % log_every == 0:
                log_steps.append(step)
                log_loss.append(batch_loss)
                log_grad.append(grad)
            if not alive:
                break
        if alive:
            record(step)

    loss_t = torch.stack(log_loss, 1).tolist() if log_steps else [[] for _ in cfgs]
    norm_t = (
        torch.linalg.vector_norm(torch.stack(log_grad, 1), dim=2).tolist()
        if log_steps
        else [[] for _ in cfgs]
    )
    w_ols, b_ols = ols(p.X, p.y)
    ols_w = float(torch.linalg.vector_norm(p.true_w - w_ols))
    ols_b = abs(p.true_b - float(b_ols))
    for k, h in enumerate(hists):
        final = frozen.get(k, theta[k])
        if k not in frozen:
            updates[k] = step
        # a model logs the steps it took: those before the one where it diverged
        keep = bisect.bisect_right(log_steps, updates[k])
        h.steps, h.batch_loss, h.grad_norm = log_steps[:keep], loss_t[k][:keep], norm_t[k][:keep]
        h.updates = updates[k]
        h.w_hat, h.b_hat = final[:d].tolist(), float(final[d])
        h.ols_w_error, h.ols_b_error = ols_w, ols_b
    return hists
