"""How a run ended: one classification, made once, where training ends.

Every engine's runs are classified by :func:`classify` from what the run logs (its epoch
``train_loss`` history, entry 0 = before training, the update where it stopped, an update
error), so a store written before outcomes existed is classified from its logged curves with
the very same function (the report's back-fill) and gets the same answer:

- ``update_error``: the update raised (``model.sgd=without_no_grad``): nothing was trained;
- ``diverged``: the trainer stopped it (a non-finite loss, or a batch loss above the
  divergence limit), or its final full-data loss is above its initial one (an explosion too
  slow to reach the limit, cut off by the end of training, or gradients that accumulate);
- ``converged``: the loss changed by less than 1e-3 (relative) over the last 10% of the
  logged epochs, or by less than the expected fluctuation at SGD's noise floor
  (:func:`floor_tolerance`), under which a constant-lr run cannot settle further;
- ``unconverged``: any other run (still moving when training ended).

Torch-free and MLflow-free (numpy; :mod:`pipeline.theory` for the floor, imported when used):
the trainer, the report and the tests share it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CONVERGED = "converged"
UNCONVERGED = "unconverged"
DIVERGED = "diverged"
UPDATE_ERROR = "update_error"
OUTCOMES = (CONVERGED, UNCONVERGED, DIVERGED, UPDATE_ERROR)

TAIL = 0.1  # the last part of training the convergence rule looks at
RTOL = 1e-3  # relative change over it that counts as settled
FLOOR_FACTOR = 3.0  # the floor tolerance, in expected excess losses at the floor


def tail_change(losses: Sequence[float] | np.ndarray, tail: float = TAIL) -> tuple[float, int]:
    """(|L_E − L_{E−k}|, k) with E = len(losses) − 1 and k = max(1, ⌈tail·E⌉)."""
    L = np.asarray(losses, dtype=float)
    E = len(L) - 1
    k = max(1, math.ceil(tail * E))
    return float(abs(L[-1] - L[-1 - k])), k


def failed(losses: Sequence[float] | np.ndarray, diverged: bool = False) -> bool:
    """A run that is not a result: it diverged (the trainer's flag), its loss history has a
    non-finite value or is empty, or its final loss is above its initial loss."""
    L = np.asarray(losses, dtype=float)
    if diverged or len(L) == 0 or not np.isfinite(L).all():
        return True
    return bool(L[-1] > L[0])


def converged(
    losses: Sequence[float] | np.ndarray,
    tail: float = TAIL,
    rtol: float = RTOL,
    floor_tol: float | None = None,
) -> bool:
    """Whether an epoch-loss history (entry 0 = before training) has settled.

    Let E = len(losses) − 1 epochs and k = max(1, ⌈tail·E⌉): converged iff every value is
    finite and |L_E − L_{E−k}| < rtol·|L_{E−k}|, or |L_E − L_{E−k}| ≤ floor_tol (an absolute
    tolerance: the loss fluctuation at the SGD noise floor, :func:`floor_tolerance`, under
    which a constant-lr run cannot settle further). Needs at least one epoch; a failed run
    (see :func:`failed`) is never converged.
    """
    L = np.asarray(losses, dtype=float)
    if len(L) < 2 or not np.isfinite(L).all() or failed(L):
        return False
    change, k = tail_change(L, tail)
    if change < rtol * abs(L[-1 - k]):
        return True
    return floor_tol is not None and change <= floor_tol


def floor_tolerance(
    lr: float,
    batch_size: int,
    d: int,
    noise: float,
    n: int,
    loss: str,
    reduction: str,
    schedule: str,
) -> float | None:
    """FLOOR_FACTOR × the expected excess loss at SGD's noise floor (constant lr, MSE or
    ½-squared; ``lr`` is the effective lr, after lr_scaling): the epoch loss of a run at its
    floor moves by about that much, so it cannot settle further. None where no floor applies."""
    if schedule != "constant" or loss not in ("mse", "squared"):
        return None
    from pipeline import theory

    reduction = "mean" if reduction == "nominal" else reduction  # equal on full batches
    return FLOOR_FACTOR * theory.excess_loss_at_floor(
        float(lr), int(batch_size), int(d), float(noise), int(n), loss, reduction
    )


def floor_tolerance_of(cfg: Any) -> float | None:
    """:func:`floor_tolerance` of a resolved config (a DictConfig: enums or strings)."""
    from pipeline.config import effective_lr

    def name(x: Any) -> str:
        return str(getattr(x, "value", x))

    data = cfg.data
    return floor_tolerance(
        effective_lr(cfg),
        int(cfg.train.batch_size),
        len(data.true_w) + int(data.zero_features),
        float(data.noise),
        int(data.n),
        name(cfg.loss.name),
        name(cfg.loss.reduction),
        name(cfg.optim.schedule),
    )


def classify(
    losses: Sequence[float] | np.ndarray,
    diverged_at_step: int | None = None,
    update_error: str | None = None,
    floor_tol: float | None = None,
    divergence_ratio: float | None = None,
) -> tuple[str, str]:
    """(outcome, reason) of one run from what it logged: ``losses`` its epoch train_loss
    history as logged (entry 0 = before training), ``diverged_at_step`` the update where the
    trainer stopped it (None: it ran to the end), ``update_error`` the update that raised,
    ``floor_tol`` :func:`floor_tolerance`. ``divergence_ratio`` only words the reason."""
    L = np.asarray(losses, dtype=float)
    if update_error:
        return UPDATE_ERROR, f"the update raised: {update_error.splitlines()[0][:200]}"
    if diverged_at_step is not None:
        limit = "above the divergence limit"
        if divergence_ratio is not None:
            limit = f"above {divergence_ratio:g} × max(initial loss, 1)"
        return DIVERGED, f"stopped at update {diverged_at_step}: a loss was non-finite or {limit}"
    if len(L) == 0 or not np.isfinite(L).all():
        return DIVERGED, "non-finite or missing train_loss"
    if L[-1] > L[0]:
        return DIVERGED, f"final train_loss {L[-1]:.3g} > initial {L[0]:.3g}"
    if len(L) < 2:
        return UNCONVERGED, "no epoch trained"
    change, k = tail_change(L)
    rel = change / abs(L[-1 - k]) if L[-1 - k] != 0 else (0.0 if change == 0 else math.inf)
    where = f"over the last {k} of {len(L) - 1} logged epochs"
    if converged(L, floor_tol=floor_tol):
        if change < RTOL * abs(L[-1 - k]):
            return CONVERGED, f"train_loss changed {rel:.2g} (relative) {where} < {RTOL:g}"
        floor = f"floor tolerance {floor_tol:.2g}"
        return CONVERGED, f"train_loss changed {change:.2g} {where} ≤ {floor}"
    floor = "" if floor_tol is None else f" and > floor tolerance {floor_tol:.2g}"
    return UNCONVERGED, f"train_loss changed {rel:.2g} (relative) {where} ≥ {RTOL:g}{floor}"
