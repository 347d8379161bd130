"""The training loop: one loop for every engine.

It owns what all trainers share: the data and initial weights (drawn from generators seeded
from ``seed``), the batch order, the per-epoch full-data metrics, divergence detection, and the
History. The data comes from a source (:mod:`pipeline.sources`): held in memory, or streamed
in chunks that are drawn again for every pass and never all held. What varies plugs in as a
:class:`pipeline.steps.Step`: the d2l 3.2 scratch code, the d2l 3.3 ``nn.Linear`` code, or the
stacked closed form that trains K configs at once.

Nothing here knows about MLflow or printing: :func:`train` returns one History per config and
calls an optional ``on_epoch`` hook; the job (``pipeline.job``) decides what to do with both.

Same seed ⇒ the same data, initial weights and batches for every engine, so with the same loss,
reduction and lr the scratch, linear and stacked trajectories agree to floating-point rounding.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.config import (
    DataSourceName,
    EngineName,
    InitName,
    Reduction,
    averaging_start,
    effective_lr,
    lr_factor,
    planned_epochs,
    planned_updates,
)
from pipeline.data import Generators, make_generators, synthetic_data, with_bias_column
from pipeline.engines import engine_of, resolve_engine  # torch-free: the sweeper plans with them
from pipeline.outcome import DIVERGED, classify, floor_tolerance_of
from pipeline.sources import DataSource, MemorySource, StreamSource
from pipeline.steps import make_step

EPOCH_METRICS = ("train_loss", "mse", "w_error", "b_error")
# with a held-out set (data.n_val > 0): its MSE and the generalisation gap val_mse − mse
# (`mse` is the training set's MSE)
VAL_METRICS = ("val_mse", "gap")
# train.log_every=0 (auto): at most about this many points per logged curve. The per-update
# curves (batch_loss and three gradient norms) are most of a run's payload, and MLflow's
# log_batch costs ~0.1 ms a point: 100 points keep a curve's shape and a tail long enough
# for stationary statistics, at half the store time of 200.
MAX_STEP_POINTS = 100
MAX_EPOCH_POINTS = 200
# Training runs on one intra-op thread: the tensors are tiny (n x (d+1), K models), so a second
# thread only adds synchronisation (measured 50x slower per op on a busy 2-core machine), and a
# fixed count keeps reduction order, hence the bits, the same everywhere. Launchers parallelise
# across processes instead.
TRAIN_THREADS = 1


@dataclass
class Problem:
    """The data of one job and the truth it was drawn from."""

    X: torch.Tensor
    y: torch.Tensor
    true_w: torch.Tensor  # data.true_w, then data.zero_features zeros
    true_b: float


@dataclass
class History:
    """Everything a job measured; plain Python numbers, ready to log."""

    epochs: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in EPOCH_METRICS})
    epoch_ids: list[int] = field(default_factory=list)  # the epoch of each entry above
    steps: list[int] = field(default_factory=list)  # global update step of each entry below
    batch_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # ‖∇θ‖ of the batch loss, θ = [w, b]
    grad_norm_w: list[float] = field(default_factory=list)  # ‖∇w‖ (w.grad, net[0].weight.grad)
    grad_norm_b: list[float] = field(default_factory=list)  # |∇b| (b.grad, net[0].bias.grad)
    updates: int = 0  # optimiser steps taken
    diverged_at_step: int | None = None  # first update whose loss was nan/inf or exploded
    w_hat: list[float] = field(default_factory=list)
    b_hat: float = math.nan
    ols_w_error: float = math.nan
    ols_b_error: float = math.nan
    ols_mse: float = math.nan  # training MSE of the least-squares (min-norm) fit
    ols_val_mse: float = math.nan  # its MSE on the held-out set (nan without one)
    last_iterate_w_error: float = math.nan  # with iterate averaging: the last iterate's error
    data_mb: float = math.nan  # MB of examples the data source held at once (all n, or a chunk)
    probes: dict[str, list[float]] = field(default_factory=dict)  # step diagnostics, at `steps`
    update_error: str | None = None  # the update that could not be made (training stopped)
    # how it ended (pipeline.outcome.classify of the logged train_loss history) and why
    outcome: str = ""
    outcome_reason: str = ""

    @property
    def diverged(self) -> bool:
        """Stopped by the trainer, or ended above its initial loss (outcome ``diverged``)."""
        return self.diverged_at_step is not None or self.outcome == DIVERGED

    @property
    def final_mse(self) -> float:
        """What the job returns to a sweeper: inf, never NaN, for a diverged run (a slow
        explosion too: its finite last mse is not a result to optimise)."""
        return math.inf if self.diverged else self.epochs["mse"][-1]


# --- which configs train together -------------------------------------------------------------


def schedule_key(cfg: DictConfig) -> str:
    """Configs with equal keys share data and batch order, so the stacked engine can train
    them as one computation."""
    t = cfg.train
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return json.dumps(
        [
            data,
            cfg.seed,
            t.batch_size,
            planned_epochs(cfg),
            t.drop_last,
            t.dtype.value,
            t.log_every,
            t.log_every_epochs,
        ],
        sort_keys=True,
    )


def group_by_schedule(cfgs: Sequence[DictConfig]) -> list[list[int]]:
    """Indices of ``cfgs`` in trainable groups: stacked configs by schedule, every other config
    alone (its d2l step trains one model)."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        key = schedule_key(cfg) if engine_of(cfg) == "stacked" else f"alone-{i}"
        groups.setdefault(key, []).append(i)
    return list(groups.values())


# --- set-up -------------------------------------------------------------------------------------


def torch_dtype(cfg: DictConfig) -> torch.dtype:
    return getattr(torch, cfg.train.dtype.value)


def true_weights(cfg: DictConfig) -> torch.Tensor:
    """data.true_w followed by data.zero_features zeros: features that carry no signal."""
    d = cfg.data
    return torch.tensor([*d.true_w, *[0.0] * int(d.zero_features)], dtype=torch_dtype(cfg))


def make_problem(cfg: DictConfig, gens: Generators) -> Problem:
    d = cfg.data
    true_w = true_weights(cfg)
    X, y = synthetic_data(
        true_w, d.true_b, d.n, d.noise, gens.data, d.outliers.fraction, d.outliers.scale
    )
    return Problem(X, y, true_w, float(d.true_b))


def make_source(cfg: DictConfig, gens: Generators) -> DataSource:
    """The config's data: the Problem in memory, or a stream drawn from ``seed`` chunk by chunk
    (``gens.data`` is then unused: each chunk has its own generator)."""
    d = cfg.data
    if DataSourceName(d.source) == DataSourceName.stream:
        return StreamSource(
            true_weights(cfg),
            float(d.true_b),
            int(d.n),
            float(d.noise),
            int(cfg.seed),
            int(d.chunk_size),
            float(d.outliers.fraction),
            float(d.outliers.scale),
        )
    p = make_problem(cfg, gens)
    return MemorySource(p.X, p.y, p.true_w, p.true_b)


def make_validation(
    cfg: DictConfig, gen: torch.Generator, p: Problem | DataSource
) -> Problem | None:
    """The held-out set: data.n_val fresh examples from the training data's distribution (the
    same weights, noise and outlier corruption: generalisation to more of the same), drawn
    from its own stream; None when data.n_val = 0."""
    d = cfg.data
    if d.n_val == 0:
        return None
    X, y = synthetic_data(
        p.true_w, p.true_b, d.n_val, d.noise, gen, d.outliers.fraction, d.outliers.scale
    )
    return Problem(X, y, p.true_w, p.true_b)


def mse_of(p: Problem, w: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error of the model (w, b) on a data set."""
    return float(((p.X @ w + b - p.y.reshape(-1)) ** 2).mean())


# the torch.nn.init function behind each init (the report's catalogue marks them as trained here)
TORCH_INITS: dict[InitName, Callable[..., torch.Tensor]] = {
    InitName.normal: torch.nn.init.normal_,
    InitName.zeros: torch.nn.init.zeros_,
    InitName.xavier: torch.nn.init.xavier_uniform_,
    InitName.kaiming: torch.nn.init.kaiming_normal_,
}


def init_params(cfg: DictConfig, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (w, b), drawn from the config's own init stream."""
    w = torch.zeros(1, d, dtype=torch_dtype(cfg))  # nn.Linear's (out, in) layout for fan-in/out
    name = InitName(cfg.init.name)
    fill = TORCH_INITS[name]
    if name == InitName.normal:
        fill(w, 0.0, cfg.init.std, generator=gen)
    elif name == InitName.xavier:
        fill(w, gain=cfg.init.gain, generator=gen)
    elif name == InitName.kaiming:
        # std = gain/√fan_in with fan_in = d; gain 1 ('linear') is He's choice for a layer
        # with no nonlinearity after it (the default 'leaky_relu' would give √2)
        fill(w, mode="fan_in", nonlinearity="linear", generator=gen)
    return w.reshape(-1), torch.zeros((), dtype=w.dtype)


def divergence_limit(cfg: DictConfig, initial_loss: float) -> float:
    """In float64 an exploding loss takes many updates to overflow: a batch loss above
    divergence_ratio times the starting loss (on a scale of at least 1) counts as diverged."""
    return float(cfg.train.divergence_ratio * max(initial_loss, 1.0))


# --- the loop -----------------------------------------------------------------------------------

EpochHook = Callable[[int, dict[str, float]], None]


def train(cfgs: Sequence[DictConfig], on_epoch: EpochHook | None = None) -> list[History]:
    """:func:`train_configs` on TRAIN_THREADS intra-op threads (the caller's count restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return train_configs(cfgs, on_epoch)
    finally:
        torch.set_num_threads(previous)


def train_configs(cfgs: Sequence[DictConfig], on_epoch: EpochHook | None = None) -> list[History]:
    """Train configs that share a schedule (one config, unless they are all stacked) with
    their resolved engine; one History per config, deterministic on the CPU.

    A model whose batch loss is nan/inf or above its divergence limit stops there, before that
    update: it keeps its parameters and rides along with lr 0, so the hot loop needs no mask.
    ``on_epoch`` sees the first model's metrics (a single job prints them)."""
    engines = {engine_of(c) for c in cfgs}
    if len(engines) != 1 or len({schedule_key(c) for c in cfgs}) != 1:
        raise ValueError("train() needs configs of one engine and schedule: group_by_schedule")
    (engine,) = engines
    first = cfgs[0]
    K = len(cfgs)
    gens = make_generators(first.seed)
    source = make_source(first, gens)
    n, d, dtype = source.n, len(source.true_w), source.true_w.dtype
    true_w, true_b = source.true_w, source.true_b
    val = make_validation(first, gens.val, source)
    A_val = None if val is None else with_bias_column(val.X)
    metrics = EPOCH_METRICS + (() if val is None else VAL_METRICS)
    # each config draws its own initial weights from a fresh init stream
    inits = [init_params(c, d, make_generators(c.seed).init) for c in cfgs]
    step = make_step(engine, cfgs, torch.stack([torch.cat([w, b.reshape(1)]) for w, b in inits]))
    base_lr = torch.tensor([effective_lr(c) for c in cfgs], dtype=dtype)
    lr = base_lr.clone()
    factors = [lr_factor(c) for c in cfgs]
    scheduled = any(c.optim.schedule.value != "constant" for c in cfgs)
    # iterate averaging: per model, the update after which its iterates are averaged
    starts = [averaging_start(c) for c in cfgs]
    averaged = torch.tensor([s is not None for s in starts])
    avg_from = min((s for s in starts if s is not None), default=None)
    avg = torch.zeros(K, d + 1, dtype=dtype)
    counts = torch.zeros(K, 1, dtype=dtype)
    start_at = torch.tensor([[math.inf if s is None else s] for s in starts], dtype=dtype)
    limit = torch.full((K,), math.inf, dtype=dtype)
    summed = torch.tensor([Reduction(c.loss.reduction) == Reduction.sum for c in cfgs])
    hists = [History(epochs={key: [] for key in metrics}) for _ in cfgs]
    alive = set(range(K))
    frozen: dict[int, torch.Tensor] = {}  # model -> its parameters when it diverged
    updates = [0] * K

    def freeze(k: int, at_step: int, taken: int) -> None:
        hists[k].diverged_at_step, updates[k] = at_step, taken
        frozen[k] = step.params()[k].clone()
        alive.discard(k)
        base_lr[k], lr[k], limit[k] = 0.0, 0.0, math.inf

    def model_params() -> torch.Tensor:
        """θ of the model each config returns: the averaged iterate once its averaging has
        started, else the current one."""
        theta = step.params()
        if avg_from is None:
            return theta
        return torch.where(averaged[:, None] & (counts > 0), avg, theta)

    def full_data_losses(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K,) train_loss and mse over all n examples, chunk by chunk: a chunk's mean
        weighs m/n, a sum counts whole. In memory the data is one chunk, whose weight 1 is
        exact, so the numbers are those of the whole-data formulas."""
        loss = mse = torch.zeros(K, dtype=dtype)
        for X, y in source.chunks():
            share = len(X) / n
            r = with_bias_column(X) @ theta.T - y  # (m, K)
            mse = mse + (r**2).mean(0) * share
            chunk_loss = step.full_loss(X, y, theta)
            loss = loss + torch.where(summed, chunk_loss, chunk_loss * share)
        return loss, mse

    def record(epoch: int, t: int) -> None:
        """Full-data metrics of the live models (and held-out ones, at the same parameters); a
        non-finite one ends that model. Kept every ``epoch_every`` epochs and at the last one
        (train.log_every_epochs: every epoch when it is 0 and log_every is set)."""
        theta = model_params()
        train_loss, mse = full_data_losses(theta)
        columns = {
            "train_loss": train_loss,
            "mse": mse,
            "w_error": torch.linalg.vector_norm(theta[:, :d] - true_w, dim=1),
            "b_error": (theta[:, d] - true_b).abs(),
        }
        if val is not None and A_val is not None:
            columns["val_mse"] = ((A_val @ theta.T - val.y) ** 2).mean(0)
            columns["gap"] = columns["val_mse"] - columns["mse"]
        table = torch.stack([columns[k] for k in metrics], dim=1).tolist()
        keep = epoch % epoch_every == 0 or epoch == epochs
        for k in sorted(alive):
            if not all(math.isfinite(v) for v in table[k]):
                freeze(k, max(t, 1), t)
                continue
            if keep:
                hists[k].epoch_ids.append(epoch)
                for key, value in zip(metrics, table[k], strict=True):
                    hists[k].epochs[key].append(value)
        if on_epoch is not None and 0 in alive:
            on_epoch(epoch, dict(zip(metrics, table[0], strict=True)))

    # plain values: a DictConfig read per update would cost more than the update
    epochs, batch_size = planned_epochs(first), int(first.train.batch_size)
    drop_last, log_every = bool(first.train.drop_last), int(first.train.log_every)
    epoch_every = int(first.train.log_every_epochs)
    if log_every == 0:  # auto: at most about MAX_*_POINTS points per curve
        log_every = max(1, -(-planned_updates(first) // MAX_STEP_POINTS))
        epoch_every = epoch_every or max(1, -(-epochs // MAX_EPOCH_POINTS))
    epoch_every = epoch_every or 1
    record(0, 0)
    for k in alive:
        limit[k] = divergence_limit(cfgs[k], hists[k].epochs["train_loss"][0])
    log_steps: list[int] = []
    # logged values are kept as Python floats, not tensors: hundreds of small tensors kept
    # alive between a stream's chunk buffers fragment the C heap (measured: +10 MB of RSS)
    log_loss: list[list[float]] = []
    log_grad: list[list[list[float]]] = []  # norms taken once at the end
    log_probes: dict[str, list[float]] = {}
    t = 0
    for epoch in range(1, epochs + 1):
        if not alive or step.error is not None:
            break
        for Xb, yb in source.epoch(step, gens.batches, batch_size, drop_last):
            t += 1
            loss = step.batch_loss(Xb, yb)
            ok = loss <= limit  # `not <=` also catches nan
            if not ok.all():
                for k in torch.nonzero(~ok).flatten().tolist():
                    if k in alive:
                        freeze(k, t, t - 1)
                if not alive:
                    break
            if scheduled:
                lr = base_lr * torch.tensor([f(t - 1) for f in factors], dtype=lr.dtype)
            grad = step.update(lr)
            if step.error is not None:  # the update raised (model.sgd=without_no_grad)
                t -= 1
                break
            if avg_from is not None and t > avg_from:
                # running mean of the iterates after each model's own start
                counts += t > start_at  # (K, 1): each model's count of averaged iterates
                avg = torch.where(
                    counts > 0, avg + (step.params() - avg) / counts.clamp(min=1), avg
                )
            if t % log_every == 0:
                log_steps.append(t)
                log_loss.append(loss.tolist())
                log_grad.append(grad.tolist())
                for key, value in step.probes().items():
                    log_probes.setdefault(key, []).append(value)
        if alive and step.error is None:
            record(epoch, t)

    loss_t = [list(per_model) for per_model in zip(*log_loss, strict=True)] or [[] for _ in cfgs]
    norms: dict[str, list[list[float]]] = {k: [[] for _ in cfgs] for k in ("all", "w", "b")}
    if log_grad:
        grads = torch.tensor(log_grad, dtype=dtype).transpose(0, 1).contiguous()  # (K, steps, d+1)
        norms["all"] = torch.linalg.vector_norm(grads, dim=2).tolist()
        norms["w"] = torch.linalg.vector_norm(grads[..., :d], dim=2).tolist()
        norms["b"] = grads[..., d].abs().tolist()
    w_ols, b_ols = source.ols()
    ols_w = float(torch.linalg.vector_norm(true_w - w_ols))
    ols_b = abs(true_b - float(b_ols))
    ols_mse = source.mse(w_ols, b_ols)
    ols_val = math.nan if val is None else mse_of(val, w_ols, b_ols)
    theta, last = model_params(), step.params()
    for k, h in enumerate(hists):
        final = frozen.get(k, theta[k])
        if starts[k] is not None and k not in frozen:
            h.last_iterate_w_error = float(torch.linalg.vector_norm(last[k, :d] - true_w))
        if k not in frozen:
            updates[k] = t
        # a model logs the steps it took: those before the one where it diverged
        keep = bisect.bisect_right(log_steps, updates[k])
        h.steps, h.batch_loss = log_steps[:keep], loss_t[k][:keep]
        h.grad_norm, h.grad_norm_w = norms["all"][k][:keep], norms["w"][k][:keep]
        h.grad_norm_b = norms["b"][k][:keep]
        h.probes = {key: values[:keep] for key, values in log_probes.items()}  # K = 1 steps
        h.update_error = step.error
        h.updates = updates[k]
        h.w_hat, h.b_hat = final[:d].tolist(), float(final[d])
        h.ols_w_error, h.ols_b_error = ols_w, ols_b
        h.ols_mse, h.ols_val_mse = ols_mse, ols_val
        h.data_mb = source.held_bytes / 1e6
        # from the history as logged (thinned by train.log_every_epochs), so a store's
        # back-fill, classifying the same curve, reaches the same outcome
        h.outcome, h.outcome_reason = classify(
            h.epochs["train_loss"],
            h.diverged_at_step,
            h.update_error,
            floor_tolerance_of(cfgs[k]),
            float(cfgs[k].train.divergence_ratio),
        )
    return hists


def train_one(cfg: DictConfig, on_epoch: EpochHook | None = None) -> History:
    """Train one resolved config (``train.engine=auto`` means its d2l code)."""
    if EngineName(cfg.train.engine) == EngineName.auto:
        cfg = cfg.copy()
        resolve_engine(cfg, stacking=False)
    return train([cfg], on_epoch)[0]
