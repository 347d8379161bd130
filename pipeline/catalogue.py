"""PyTorch's loss functions and initialisers, found by introspecting the installed torch.

d2l 3.3 exercise 2 asks which losses and initialisers the framework offers. The answer here is
computed, not written down, so it stays true when torch changes:

- :func:`losses`: every public class of ``torch.nn`` whose name ends in ``Loss`` and that
  subclasses ``torch.nn.modules.loss._Loss`` (deprecated aliases, which warn when built, left
  out), each with the verdict of :func:`regression_probe`.
- :func:`inits`: every public function of ``torch.nn.init`` whose name ends in ``_`` (the
  in-place forms; the deprecated names without ``_`` are left out), each with the verdict of
  :func:`init_probe`.

Each entry says whether this project trains it (``loss=...`` / ``init=...``): read from
:data:`pipeline.losses.NN_LOSSES` and :data:`pipeline.train.TORCH_INITS`, the tables the
training code itself uses. Nothing here trains a model.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from pipeline.losses import DELTA_KEYWORD, NN_LOSSES
from pipeline.train import TORCH_INITS

# the probe's real-valued targets: (8, 1), on both sides of 0 and well outside [0, 1]
_TARGET = torch.linspace(-3.0, 5.0, 8, dtype=torch.float64).reshape(-1, 1)
_STEP = 0.5  # how far the probe moves the prediction from the target
_FILL = 0.5  # value of any required scalar argument of an initialiser (constant_, sparse_)


@dataclass
class Entry:
    name: str  # torch.nn.<name> or torch.nn.init.<name>
    regression: bool  # losses: minimised by predicting a real target; inits: fills a (1, d) weight
    why: str  # what the probe saw
    extra: str  # required inputs beyond (ŷ, y) / arguments beyond the weight, filled by the probe
    trained_here: bool
    config: str  # the overrides that train it here ('' if none)


def _required(fn: Callable[..., Any], skip: int) -> list[str]:
    """Names of the parameters of fn without a default, after the first ``skip``."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


def regression_probe(cls: type[nn.Module]) -> tuple[bool, str, list[str]]:
    """Whether a loss applies to regression, by its behaviour: built with its defaults and
    called as ``loss(ŷ, y, *extra)`` on float64 (8, 1) tensors with real targets y in [−3, 5]
    (any further required input set to ones, e.g. GaussianNLLLoss's variance), it must return
    a finite value whose gradient in ŷ vanishes at ŷ = y and which grows when ŷ moves ±0.5 away
    from y. That is: predicting the target minimises it. Classification losses fail it (they
    raise on real targets, or want a probability or log-rate instead of y itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. reduction warnings of the probe's own calls
        try:
            loss = cls()
        except TypeError:
            needs = _required(cls.__init__, 1)
            return False, "cannot be built with its defaults: needs " + ", ".join(needs), needs
        extra = _required(loss.forward, 2)  # after input and target (a bound method)
        ones = [torch.ones_like(_TARGET) for _ in extra]
        y_hat = _TARGET.clone().requires_grad_(True)
        try:
            at = loss(y_hat, _TARGET, *ones)
            (grad,) = torch.autograd.grad(at, y_hat)
            away = [float(loss(_TARGET + s, _TARGET, *ones)) for s in (-_STEP, _STEP)]
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            return False, f"raises {type(exc).__name__} on a real-valued target", extra
    with_extra = f" ({', '.join(extra)} = 1)" if extra else ""
    at = at.detach()
    if not math.isfinite(float(at)):
        return False, "not finite at ŷ = y", extra
    if float(grad.abs().max()) > 1e-9:
        return False, "its gradient at ŷ = y is not 0: minimised elsewhere", extra
    if not all(a > float(at) for a in away):
        return False, "flat around ŷ = y", extra
    return True, f"minimised at ŷ = y{with_extra}", extra


def _is_deprecated(cls: type) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cls()
        except Exception:  # noqa: BLE001 - a class that cannot be built is not deprecated for it
            return False
    return any(
        issubclass(w.category, FutureWarning | DeprecationWarning)
        and "deprecated" in str(w.message)
        for w in caught
    )


def torch_loss_classes() -> list[type[nn.Module]]:
    """The public ``torch.nn`` loss classes, by name (deprecated aliases left out)."""
    found: list[type[nn.Module]] = []
    for name in sorted(dir(nn)):
        obj = getattr(nn, name)
        if name.startswith("_") or not name.endswith("Loss") or not isinstance(obj, type):
            continue
        if issubclass(obj, _Loss) and not _is_deprecated(obj):
            found.append(obj)
    return found


def _loss_config(cls: type[nn.Module]) -> str:
    """The overrides that train ``cls`` here (a loss trained through a subclass, like d2l's
    ½-squared through ``nn.MSELoss``, says so)."""
    configs = []
    for name, module in NN_LOSSES.items():
        if issubclass(module, cls):
            key = DELTA_KEYWORD.get(name)
            via = f" ({module.__name__})" if module is not cls else ""
            configs.append(f"loss={name.value}" + (f" (loss.delta = {key})" if key else "") + via)
    return "; ".join(configs)


def losses() -> list[Entry]:
    out = []
    for cls in torch_loss_classes():
        regression, why, extra = regression_probe(cls)
        config = _loss_config(cls)
        out.append(Entry(cls.__name__, regression, why, ", ".join(extra), bool(config), config))
    return out


def init_probe(fn: Callable[..., Any], d: int = 2) -> tuple[bool, str, list[str]]:
    """Whether an initialiser applies to this project's weight: called on a float64 (1, d)
    tensor (``nn.Linear``'s (out, in) layout) with its defaults, required scalar arguments
    set to 0.5 and a seeded generator where it takes one, it fills it with finite values."""
    w = torch.full((1, d), math.nan, dtype=torch.float64)
    required = _required(fn, 1)
    kwargs: dict[str, Any] = {name: _FILL for name in required}
    if "generator" in inspect.signature(fn).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(w, **kwargs)
    except (RuntimeError, ValueError, TypeError) as exc:
        return False, f"raises {type(exc).__name__} on a (1, {d}) weight", required
    if not bool(torch.isfinite(w).all()):
        return False, f"leaves a (1, {d}) weight non-finite", required
    given = ", ".join(f"{k} = {_FILL:g}" for k in required)
    return True, f"fills a (1, {d}) weight" + (f" ({given})" if given else ""), required


def inits() -> list[Entry]:
    trained = {fn.__name__: name.value for name, fn in TORCH_INITS.items()}
    out = []
    for name in sorted(dir(nn.init)):
        fn = getattr(nn.init, name)
        if name.startswith("_") or not name.endswith("_") or not inspect.isfunction(fn):
            continue
        applies, why, extra = init_probe(fn)
        config = f"init={trained[name]}" if name in trained else ""
        out.append(Entry(name, applies, why, ", ".join(extra), bool(config), config))
    return out


def catalogue() -> dict[str, Any]:
    """The whole catalogue, JSON-ready (answers.json["catalogue"])."""
    return {
        "torch_version": torch.__version__,
        "losses": [asdict(e) for e in losses()],
        "inits": [asdict(e) for e in inits()],
    }
