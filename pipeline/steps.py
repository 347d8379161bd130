"""What varies between the trainers: how a batch's loss is computed and how the parameters move.

The one training loop (:mod:`pipeline.train`) owns everything else: the batch order, the epoch
metrics, divergence and the History. A step trains K models at once: K = 1 for the two d2l
codes, K ≥ 1 for the stacked closed form.

- :class:`ScratchStep`: d2l 3.2: raw tensors, ``linreg``, a hand-written loss, ``data_iter``
  and the hand-written ``sgd`` (or d2l chapter 11's hand-written momentum, Adagrad, RMSprop
  and Adam), with autograd.
- :class:`LinearStep`: d2l 3.3: ``nn.Sequential(nn.Linear)``, ``DataLoader``, ``nn`` losses
  and ``torch.optim`` (``SGD``, ``Adam``, ``Adagrad``, ``RMSprop``).
- :class:`StackedStep`: K models as one computation: weights (K, d+1), one matmul per batch,
  gradients in closed form (what autograd computes for these losses), and every optimiser's
  update as one closed form with per-model coefficients (:class:`StackedRule`).

The optimisers follow ``torch.optim``'s update rules exactly (its defaults, its placement of ε),
so the three steps agree for every ``optim.name``. Each rule takes the gradient of the batch
loss as its input (``update``): anything that changes the gradient goes before the rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call
from torch.utils import data

from pipeline.config import ModelName, OptimizerName, Reduction, SgdVariant, effective_lr
from pipeline.data import with_bias_column
from pipeline.losses import ClampForm, NominalMean, nn_loss, per_sample, reduce

Batch = tuple[torch.Tensor, torch.Tensor]
# what ScratchStep.probes() logs per update; backward_ms measures the machine (reruns skip it)
SCRATCH_PROBES = ("graph_nodes", "backward_ms")
TIMED_PROBES = frozenset({"backward_ms"})


class EpochOrder:
    """One epoch's batches: a permutation of the n examples cut into batches of B (the last
    one partial, or dropped). Drawn by the loop, so every step sees the same batches."""

    def __init__(self, perm: torch.Tensor, batch_size: int, drop_last: bool):
        n = len(perm)
        self.perm, self.batch_size = perm, batch_size
        self.stop = n - n % batch_size if drop_last else n

    def index_batches(self) -> list[torch.Tensor]:
        return list(self.perm[: self.stop].split(self.batch_size))


# One chunk of a stream as it arrives: its examples (X, y) and its batch order (a permutation
# within the chunk: a stream cannot be permuted as a whole). The loop's source yields them
# lazily: a chunk is drawn only when the batches reach it.
ShuffledChunk = tuple[torch.Tensor, torch.Tensor, EpochOrder]


class Step(Protocol):
    def batches(self, X: torch.Tensor, y: torch.Tensor, order: EpochOrder) -> Iterator[Batch]:
        """The epoch's minibatches, the way this code draws them."""
        ...

    def stream_batches(self, chunks: Iterable[ShuffledChunk]) -> Iterator[Batch]:
        """The epoch's minibatches from a stream of chunks, holding one chunk at a time."""
        ...

    def batch_loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(K,) reduced loss of every model on the batch; remembered for :meth:`update`."""
        ...

    def update(self, lr: torch.Tensor) -> torch.Tensor:
        """One step of every model's optimiser (``optim.name``) with its lr (K,) on the
        gradient of the batch loss; returns those gradients (K, d+1)."""
        ...

    def params(self) -> torch.Tensor:
        """θ = [w, b] of every model, (K, d+1), detached."""
        ...

    def full_loss(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """(K,) the run's own loss and reduction on the full data (what d2l prints), at
        parameters θ (the current iterate, or the averaged one)."""
        ...

    def probes(self) -> dict[str, float]:
        """Diagnostics of the last update, logged beside ``batch_loss`` (scratch: the autograd
        graph's size and the backward time; the other steps have none)."""
        ...

    @property
    def error(self) -> str | None:
        """Why the last update could not be made (training stops there), else None."""
        ...


# --- d2l 3.2 ----------------------------------------------------------------------------------


def data_iter(
    batches: Sequence[torch.Tensor], features: torch.Tensor, labels: torch.Tensor
) -> Iterator[Batch]:
    """d2l's data_iter, over the loop's shuffled index batches (d2l shuffles a Python list)."""
    for batch_indices in batches:
        yield features[batch_indices], labels[batch_indices]


def stream_iter(chunks: Iterable[ShuffledChunk]) -> Iterator[Batch]:
    """data_iter over a stream: a generator, so each chunk is drawn (or read) only when the
    batches before it are used up, and memory stays at one chunk whatever n is."""
    for features, labels, order in chunks:
        yield from data_iter(order.index_batches(), features, labels)


def linreg(X: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return X @ w + b


def l2_penalty(w: torch.Tensor) -> torch.Tensor:
    """d2l 4.5's weight decay penalty ‖w‖²/2: weight_decay times it, added to the loss, adds
    weight_decay · w to the weight gradient (what torch.optim's weight_decay adds, before any
    optimiser's rule: L2, not AdamW's decoupled decay)."""
    return torch.sum(w.pow(2)) / 2


def sgd(params: list[torch.Tensor], lr: float) -> None:
    """Minibatch SGD on the gradient of the already reduced loss (no division by batch size:
    the loss's own reduction did it, and a partial batch is divided by its real length)."""
    with torch.no_grad():
        for param in params:
            assert param.grad is not None
            param -= lr * param.grad
            param.grad.zero_()


def graph_nodes(t: torch.Tensor) -> int:
    """Autograd nodes reachable from ``t``: what backward() walks (and what stays alive)."""
    seen: set[int] = set()
    stack = [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(fn for fn, _ in node.next_functions)
    return len(seen)


# d2l chapter 11's optimisers from scratch, in d2l's form (params, states, hyperparams), with
# torch.optim's ε placement (outside the root) and defaults, so that the scratch model trains
# exactly like torch.optim in the linear one. d2l puts ε = 1e-6 inside the root instead.

Hyperparams = dict[str, Any]


def sgd_momentum(params: list[torch.Tensor], states: list[Any], hyperparams: Hyperparams) -> None:
    """d2l 11.6: v ← μv + g, p ← p − lr·v (torch.optim.SGD's momentum, dampening 0)."""
    for p, v in zip(params, states, strict=True):
        assert p.grad is not None
        with torch.no_grad():
            v[:] = hyperparams["momentum"] * v + p.grad
            p[:] -= hyperparams["lr"] * v
        p.grad.zero_()


def adagrad(params: list[torch.Tensor], states: list[Any], hyperparams: Hyperparams) -> None:
    """d2l 11.7: s ← s + g², p ← p − lr·g / (√s + ε)."""
    eps = hyperparams["eps"]
    for p, s in zip(params, states, strict=True):
        assert p.grad is not None
        with torch.no_grad():
            s[:] += torch.square(p.grad)
            p[:] -= hyperparams["lr"] * p.grad / (torch.sqrt(s) + eps)
        p.grad.zero_()


def rmsprop(params: list[torch.Tensor], states: list[Any], hyperparams: Hyperparams) -> None:
    """d2l 11.8: s ← αs + (1 − α)g², p ← p − lr·g / (√s + ε) (d2l calls α gamma)."""
    gamma, eps = hyperparams["alpha"], hyperparams["eps"]
    for p, s in zip(params, states, strict=True):
        assert p.grad is not None
        with torch.no_grad():
            s[:] = gamma * s + (1 - gamma) * torch.square(p.grad)
            p[:] -= hyperparams["lr"] * p.grad / (torch.sqrt(s) + eps)
        p.grad.zero_()


def adam(params: list[torch.Tensor], states: list[Any], hyperparams: Hyperparams) -> None:
    """d2l 11.10: bias-corrected running means v of g and s of g²,
    p ← p − lr·v̂ / (√ŝ + ε); hyperparams["t"] counts the steps from 1."""
    beta1, beta2, eps = hyperparams["beta1"], hyperparams["beta2"], hyperparams["eps"]
    for p, (v, s) in zip(params, states, strict=True):
        assert p.grad is not None
        with torch.no_grad():
            v[:] = beta1 * v + (1 - beta1) * p.grad
            s[:] = beta2 * s + (1 - beta2) * torch.square(p.grad)
            v_bias_corr = v / (1 - beta1 ** hyperparams["t"])
            s_bias_corr = s / (1 - beta2 ** hyperparams["t"])
            p[:] -= hyperparams["lr"] * v_bias_corr / (torch.sqrt(s_bias_corr) + eps)
        p.grad.zero_()
    hyperparams["t"] += 1


class ScratchOptimizer:
    """The hand-written optimiser of a config: d2l's ``sgd`` for plain SGD, else the chapter 11
    function, with its states (zeros like each parameter) and hyperparameters."""

    def __init__(self, cfg: DictConfig, params: list[torch.Tensor]):
        o = cfg.optim
        self.name, self.params = OptimizerName(o.name), params
        self.hyperparams: Hyperparams = {
            "momentum": float(o.momentum),
            "beta1": float(o.beta1),
            "beta2": float(o.beta2),
            "alpha": float(o.alpha),
            "eps": float(o.eps),
            "t": 1,
        }
        zeros = [torch.zeros_like(p) for p in params]
        self.states: list[Any] = zeros
        self.rule: Callable[[list[torch.Tensor], list[Any], Hyperparams], None]
        if self.name == OptimizerName.sgd:
            self.rule = sgd_momentum
        elif self.name == OptimizerName.adam:
            self.states = [(v, torch.zeros_like(v)) for v in zeros]
            self.rule = adam
        else:
            self.rule = adagrad if self.name == OptimizerName.adagrad else rmsprop

    def step(self, lr: float) -> None:
        if self.name == OptimizerName.sgd and self.hyperparams["momentum"] == 0:
            sgd(self.params, lr)  # d2l 3.2's own
            return
        self.hyperparams["lr"] = lr
        self.rule(self.params, self.states, self.hyperparams)


class ScratchStep:
    """d2l 3.2, with ``model.sgd`` choosing how its ``sgd`` is written: d2l's, or one of
    the mistakes the autograd experiment measures (see :class:`pipeline.config.SgdVariant`);
    with d2l's, ``optim`` may also choose chapter 11's momentum, Adagrad, RMSprop or Adam."""

    def __init__(self, cfg: DictConfig, theta0: torch.Tensor):
        d = theta0.shape[1] - 1
        self.w = theta0[0, :d].reshape(-1, 1).clone().requires_grad_(True)
        self.b = theta0[0, d:].clone().requires_grad_(True)
        self.loss = per_sample(cfg)
        self.reduction, self.batch_size = Reduction(cfg.loss.reduction), int(cfg.train.batch_size)
        self.weight_decay = float(cfg.optim.weight_decay)
        self.variant = SgdVariant(cfg.model.sgd)
        self.optimizer = ScratchOptimizer(cfg, [self.w, self.b])
        self._last: torch.Tensor | None = None
        self._backward_s = 0.0
        self._error: str | None = None

    def batches(self, X: torch.Tensor, y: torch.Tensor, order: EpochOrder) -> Iterator[Batch]:
        return data_iter(order.index_batches(), X, y)

    def stream_batches(self, chunks: Iterable[ShuffledChunk]) -> Iterator[Batch]:
        return stream_iter(chunks)

    def batch_loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        data_loss = reduce(self.loss(linreg(X, self.w, self.b), y), self.reduction, self.batch_size)
        # d2l 4.5: the penalty joins the loss that is differentiated, not the one reported
        self._last = data_loss
        if self.weight_decay:
            self._last = data_loss + self.weight_decay * l2_penalty(self.w)
        return data_loss.detach().reshape(1)

    def update(self, lr: torch.Tensor) -> torch.Tensor:
        assert self._last is not None
        if not self.w.is_leaf:  # rebind made w, b graph nodes: keep their .grad readable
            self.w.retain_grad()
            self.b.retain_grad()
        start = time.perf_counter()
        self._last.backward()
        self._backward_s = time.perf_counter() - start
        assert self.w.grad is not None and self.b.grad is not None
        grad = torch.cat([self.w.grad.reshape(-1), self.b.grad]).reshape(1, -1).detach()
        value = float(lr[0])
        if self.variant == SgdVariant.no_grad:  # d2l's sgd, or chapter 11's other optimisers
            self.optimizer.step(value)
        elif self.variant == SgdVariant.no_zero_grad:
            with torch.no_grad():  # the next backward() adds to these gradients
                self.w -= value * self.w.grad
                self.b -= value * self.b.grad
        elif self.variant == SgdVariant.without_no_grad:
            try:
                self.w -= value * self.w.grad  # autograd refuses: an in-place op on a leaf
                self.b -= value * self.b.grad
            except RuntimeError as exc:
                self._error = str(exc).splitlines()[0]
        else:  # rebind: the new w = old w − lr·grad is recorded by autograd, old w and all
            self.w = self.w - value * self.w.grad
            self.b = self.b - value * self.b.grad
            if self.variant == SgdVariant.rebind_detach:  # ... unless cut off again
                self.w = self.w.detach().requires_grad_(True)
                self.b = self.b.detach().requires_grad_(True)
        return grad

    def probes(self) -> dict[str, float]:
        assert self._last is not None
        nodes = float(graph_nodes(self._last))
        return {"graph_nodes": nodes, "backward_ms": self._backward_s * 1e3}

    @property
    def error(self) -> str | None:
        return self._error

    def params(self) -> torch.Tensor:
        return torch.cat([self.w.detach().reshape(-1), self.b.detach()]).reshape(1, -1)

    def full_loss(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        w, b = theta[0, :-1].reshape(-1, 1), theta[0, -1:]
        with torch.no_grad():
            # on the full data the nominal reduction divides by n, like a mean
            reduction = Reduction.mean if self.reduction == Reduction.nominal else self.reduction
            return reduce(self.loss(linreg(X, w, b), y), reduction, len(X)).reshape(1)


# --- d2l 3.3 ----------------------------------------------------------------------------------


class ChunkStream(data.IterableDataset[Batch]):
    """A stream of chunks as a torch ``IterableDataset`` of minibatches (one pass = one epoch):
    what a ``DataLoader`` iterates when the data set is too big for a ``TensorDataset``."""

    def __init__(self, chunks: Iterable[ShuffledChunk]):
        self.chunks = chunks

    def __iter__(self) -> Iterator[Batch]:
        for X, y, order in self.chunks:
            for idx in order.index_batches():
                yield X[idx], y[idx]


def torch_optimizer(cfg: DictConfig, params: Any, lr: float) -> torch.optim.Optimizer:
    """torch.optim's optimiser of ``optim.name`` with the config's hyperparameters."""
    o = cfg.optim
    name = OptimizerName(o.name)
    if name == OptimizerName.adam:
        return torch.optim.Adam(params, lr=lr, betas=(float(o.beta1), float(o.beta2)), eps=o.eps)
    if name == OptimizerName.adagrad:
        return torch.optim.Adagrad(params, lr=lr, eps=float(o.eps))
    if name == OptimizerName.rmsprop:
        return torch.optim.RMSprop(params, lr=lr, alpha=float(o.alpha), eps=float(o.eps))
    return torch.optim.SGD(params, lr=lr, momentum=float(o.momentum))


class LinearStep:
    def __init__(self, cfg: DictConfig, theta0: torch.Tensor):
        d = theta0.shape[1] - 1
        self.layer = nn.Linear(d, 1, dtype=theta0.dtype)  # net[0], typed
        self.net = nn.Sequential(self.layer)
        with torch.no_grad():
            self.layer.weight.copy_(theta0[:, :d])
            self.layer.bias.copy_(theta0[0, d:])
        self.loss = nn_loss(cfg)
        self.lr = effective_lr(cfg)
        # d2l 4.5 (concise): weight decay on the weights only, the bias in its own group
        self.weight_decay = float(cfg.optim.weight_decay)
        groups: list[dict[str, Any]] = [
            {"params": self.layer.weight, "weight_decay": self.weight_decay},
            {"params": self.layer.bias},
        ]
        self.trainer = torch_optimizer(cfg, groups, self.lr)
        self._last: torch.Tensor | None = None

    def batches(self, X: torch.Tensor, y: torch.Tensor, order: EpochOrder) -> Iterator[Batch]:
        # A batch sampler with batch_size=None hands TensorDataset a whole index tensor at once:
        # one gather per batch instead of d2l's per-sample collation, in the loop's order.
        dataset = data.TensorDataset(X, y)
        return iter(data.DataLoader(dataset, sampler=order.index_batches(), batch_size=None))

    def stream_batches(self, chunks: Iterable[ShuffledChunk]) -> Iterator[Batch]:
        # batch_size=None: the dataset yields whole batches (no per-sample collation)
        return iter(data.DataLoader(ChunkStream(chunks), batch_size=None))

    def batch_loss(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._last = self.loss(self.net(X), y)
        return self._last.detach().reshape(1)

    def update(self, lr: torch.Tensor) -> torch.Tensor:
        assert self._last is not None
        value = float(lr[0])
        if value != self.lr:  # a schedule moved it
            self.lr = value
            for group in self.trainer.param_groups:
                group["lr"] = value
        self.trainer.zero_grad()
        self._last.backward()
        layer = self.layer
        assert layer.weight.grad is not None and layer.bias.grad is not None
        # the gradient the rule follows: torch.optim adds weight_decay · w to the weight's own
        grad_w = layer.weight.grad + self.weight_decay * layer.weight.detach()
        grad = torch.cat([grad_w.reshape(-1), layer.bias.grad]).reshape(1, -1)
        self.trainer.step()
        return grad

    def params(self) -> torch.Tensor:
        layer = self.layer
        return torch.cat([layer.weight.detach().reshape(-1), layer.bias.detach()]).reshape(1, -1)

    def full_loss(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        params = {"0.weight": theta[:, :-1], "0.bias": theta[0, -1:]}
        loss = self.loss.summed if isinstance(self.loss, NominalMean) else self.loss
        with torch.no_grad():
            value = loss(functional_call(self.net, params, (X,)), y)
        # on the full data the nominal reduction divides by n, like a mean
        return (value / len(X) if loss is not self.loss else value).reshape(1)

    def probes(self) -> dict[str, float]:
        return {}

    @property
    def error(self) -> str | None:
        return None


# --- stacked ----------------------------------------------------------------------------------


class StackedRule:
    """The optimisers of K models as one closed form, each model with its own coefficients
    (columns (K, 1)), so a stack may mix optimisers. With g the model's gradient and t the step
    count (from 1):

        m ← a·m + b·g,   v ← p·v + q·g²
        sgd:       θ ← θ − lr·m
        adaptive:  θ ← θ − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

    ==============  =====  =======  =====  =======  =====  =====
    optim.name      a      b        p      q        β₁     β₂
    ==============  =====  =======  =====  =======  =====  =====
    sgd             μ      1        –      –        –      –
    adam            beta1  1−beta1  beta2  1−beta2  beta1  beta2
    adagrad         0      1        1      1        0      0
    rmsprop         0      1        alpha  1−alpha  0      0
    ==============  =====  =======  =====  =======  =====  =====

    That is torch.optim's rule for each (SGD's momentum buffer starts as g, Adagrad's sum at
    0). A stack of plain SGD models (μ = 0) takes the one-line path."""

    def __init__(self, cfgs: Sequence[DictConfig], theta0: torch.Tensor):
        rows = [self.coefficients(c) for c in cfgs]
        a, b, p, q, beta1, beta2, eps = torch.tensor(rows, dtype=theta0.dtype).T[:, :, None]
        self.a, self.b, self.p, self.q, self.eps = a, b, p, q, eps
        self.beta1, self.beta2 = beta1, beta2
        self.adaptive = torch.tensor(
            [[OptimizerName(c.optim.name) != OptimizerName.sgd] for c in cfgs]
        )
        self.plain_sgd = bool((a == 0).all() and not self.adaptive.any())
        self.bias_corrected = bool((beta1 != 0).any() or (beta2 != 0).any())
        self.m, self.v = torch.zeros_like(theta0), torch.zeros_like(theta0)
        self.t = 0

    @staticmethod
    def coefficients(cfg: DictConfig) -> tuple[float, ...]:
        """(a, b, p, q, β₁, β₂, ε) of one config (the table above; SGD's unused ones 0)."""
        o = cfg.optim
        name = OptimizerName(o.name)
        if name == OptimizerName.adam:
            b1, b2 = float(o.beta1), float(o.beta2)
            return (b1, 1 - b1, b2, 1 - b2, b1, b2, float(o.eps))
        if name == OptimizerName.adagrad:
            return (0.0, 1.0, 1.0, 1.0, 0.0, 0.0, float(o.eps))
        if name == OptimizerName.rmsprop:
            alpha = float(o.alpha)
            return (0.0, 1.0, alpha, 1 - alpha, 0.0, 0.0, float(o.eps))
        return (float(o.momentum), 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def step(self, theta: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """θ after one step of every model, lr (K,). A frozen model (lr 0, see
        ``pipeline.train``) does not move, even once its state has overflowed (0·inf would
        be nan); every operation is row by row, so nothing of it reaches another model."""
        if self.plain_sgd:
            return torch.addcmul(theta, lr[:, None], grad, value=-1.0)
        self.t += 1
        self.m = torch.addcmul(self.a * self.m, self.b, grad)
        self.v = torch.addcmul(self.p * self.v, self.q, grad * grad)  # SGD rows: unused
        step_size, root = lr[:, None], self.v.sqrt()
        if self.bias_corrected:
            step_size = step_size / (1 - self.beta1**self.t)
            root = root / (1 - self.beta2**self.t).sqrt()
        denom = torch.where(self.adaptive, root + self.eps, 1.0)
        moved = theta - step_size * (self.m / denom)
        return torch.where(step_size > 0, moved, theta)


class StackedStep:
    """K configs that share data and batch order (see ``pipeline.train.schedule_key``), each
    with its own lr, optimiser, loss, reduction, Huber δ (SmoothL1 β) and initial weights."""

    def __init__(self, cfgs: Sequence[DictConfig], theta0: torch.Tensor):
        self.theta = theta0.clone()  # (K, d+1)
        self.form = ClampForm(cfgs, theta0.dtype)
        self.rule = StackedRule(cfgs, theta0)
        decay = [float(c.optim.weight_decay) for c in cfgs]
        self.weight_decay = torch.tensor(decay, dtype=theta0.dtype)[:, None] if any(decay) else None
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def batches(self, X: torch.Tensor, y: torch.Tensor, order: EpochOrder) -> Iterator[Batch]:
        # gathered once per epoch: every batch is then a view (A = [X, 1], θ = [w, b])
        A = with_bias_column(X)[order.perm]
        neg_y = -y.reshape(-1, 1)[order.perm]
        B = order.batch_size
        return ((A[i : i + B], neg_y[i : i + B]) for i in range(0, order.stop, B))

    def stream_batches(self, chunks: Iterable[ShuffledChunk]) -> Iterator[Batch]:
        for X, y, order in chunks:  # gathered once per chunk
            yield from self.batches(X, y, order)

    def batch_loss(self, A: torch.Tensor, neg_y: torch.Tensor) -> torch.Tensor:
        r = torch.addmm(neg_y, A, self.theta.T)  # residuals (B, K)
        c = self.form.clamp(r)
        sc = self.form.scale(len(A)) * c  # dLoss/dprediction
        self._batch = (sc, A)
        return torch.linalg.vecdot(sc, self.form.rest(r, c), dim=0)

    def update(self, lr: torch.Tensor) -> torch.Tensor:
        assert self._batch is not None
        sc, A = self._batch
        grad = sc.T @ A  # (K, d+1): [∇w, ∇b] of every model at once
        if self.weight_decay is not None:  # L2 on w, not b: weight_decay · w joins ∇w
            grad[:, :-1] += self.weight_decay * self.theta[:, :-1]
        self.theta = self.rule.step(self.theta, grad, lr)
        return grad

    def params(self) -> torch.Tensor:
        return self.theta

    def full_loss(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.form.value(with_bias_column(X) @ theta.T - y.reshape(-1, 1))

    def probes(self) -> dict[str, float]:
        return {}

    @property
    def error(self) -> str | None:
        return None


def make_step(engine: str, cfgs: Sequence[DictConfig], theta0: torch.Tensor) -> Step:
    """The step of a resolved engine: ``stacked``, or the model's own d2l code."""
    if engine == "stacked":
        return StackedStep(cfgs, theta0)
    if len(cfgs) != 1:
        raise ValueError(f"the {engine} step trains one config at a time, not {len(cfgs)}")
    model = ModelName(cfgs[0].model.name)
    return (ScratchStep if model == ModelName.scratch else LinearStep)(cfgs[0], theta0)
