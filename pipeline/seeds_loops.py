"""The seeds' own training loops: a faithful re-implementation of the d2l 3.2/3.3 code as the
seeds print it (Python-shuffled ``data_iter``, per-sample ``DataLoader`` collation, float32).

The reference that ``make bench`` measures our engines against, shared by the bench's
training-only row (:mod:`pipeline.bench`) and by the plain Hydra + MLflow app
(:mod:`pipeline.bench_plain`). torch only: nothing of the pipeline is imported here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn
from torch.utils import data

TRUE_W, TRUE_B = [2.0, -3.4], 4.2  # d2l's synthetic data


@dataclass
class SeedsResult:
    """What the loop saw: the full-data numbers after each epoch (epoch 0 = before training),
    the final parameters, and the least-squares fit of the same data (the floor)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    w_hat: list[float] = field(default_factory=list)
    b_hat: float = 0.0
    ols: dict[str, float] = field(default_factory=dict)  # ols_w_error, ols_b_error, ols_mse, ...
    data_mb: float = 0.0  # MB of examples held (training and held-out)


def synthetic_data(w: torch.Tensor, b: float, num_examples: int):
    X = torch.normal(0, 1, (num_examples, len(w)))
    y = torch.matmul(X, w) + b
    y += torch.normal(0, 0.01, y.shape)
    return X, y.reshape((-1, 1))


def data_iter(batch_size, features, labels):
    num_examples = len(features)
    indices = list(range(num_examples))
    random.shuffle(indices)
    for i in range(0, num_examples, batch_size):
        batch_indices = torch.tensor(indices[i : min(i + batch_size, num_examples)])
        yield features[batch_indices], labels[batch_indices]


Held = tuple[torch.Tensor, torch.Tensor] | None  # a held-out set (features, labels), if any


def epoch_numbers(
    loss: torch.Tensor,
    y_hat: torch.Tensor,
    labels: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    held: Held = None,
) -> dict[str, float]:
    """What d2l prints after an epoch (the full-data loss), the errors it prints at the end,
    and with a held-out set its MSE and the generalisation gap."""
    true_w = torch.tensor(TRUE_W)
    out = {
        "train_loss": float(loss),
        "mse": float(((y_hat - labels) ** 2).mean()),
        "w_error": float(torch.linalg.vector_norm(w.reshape(-1) - true_w)),
        "b_error": float((b.reshape(()) - TRUE_B).abs()),
    }
    if held is not None:
        X_val, y_val = held
        out["val_mse"] = float(((X_val @ w.reshape(-1, 1) + b - y_val) ** 2).mean())
        out["gap"] = out["val_mse"] - out["mse"]
    return out


def scratch(
    loss_name: str,
    reduction: str,
    lr: float,
    batch_size: int,
    epochs: int,
    features,
    labels,
    held: Held = None,
) -> SeedsResult:
    """d2l 3.2: per-sample loss, l.sum().backward(), sgd dividing by batch_size (the mean)."""
    w = torch.normal(0, 0.01, size=(len(TRUE_W), 1), requires_grad=True)
    b = torch.zeros(1, requires_grad=True)

    def linreg(X, w, b):
        return torch.matmul(X, w) + b

    def loss(y_hat, y):
        r = y_hat - y.reshape(y_hat.shape)
        if loss_name == "huber":
            return torch.where(r.abs() < 1.0, 0.5 * r**2, r.abs() - 0.5)
        return r**2

    def sgd(params, lr, batch_size):
        with torch.no_grad():
            for param in params:
                param -= lr * param.grad / batch_size
                param.grad.zero_()

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            y_hat = linreg(features, w, b)
            return epoch_numbers(loss(y_hat, labels).mean(), y_hat, labels, w, b, held)

    divide = batch_size if reduction == "mean" else 1
    out = SeedsResult(epochs=[evaluate()])
    for _ in range(epochs):
        for X, y in data_iter(batch_size, features, labels):
            l = loss(linreg(X, w, b), y)  # noqa: E741 (the book's name)
            l.sum().backward()
            sgd([w, b], lr, divide)
        out.epochs.append(evaluate())
    out.w_hat, out.b_hat = w.detach().reshape(-1).tolist(), float(b.detach())
    return out


def concise(
    loss_name: str,
    reduction: str,
    lr: float,
    batch_size: int,
    epochs: int,
    features,
    labels,
    held: Held = None,
) -> SeedsResult:
    """d2l 3.3: DataLoader(TensorDataset, shuffle=True), nn.Linear, nn losses, optim.SGD."""
    loader = data.DataLoader(data.TensorDataset(features, labels), batch_size, shuffle=True)
    net = nn.Sequential(nn.Linear(len(TRUE_W), 1))
    net[0].weight.data.normal_(0, 0.01)  # type: ignore[operator]
    net[0].bias.data.fill_(0)  # type: ignore[operator]
    loss = nn.HuberLoss() if loss_name == "huber" else nn.MSELoss(reduction=reduction)
    trainer = torch.optim.SGD(net.parameters(), lr=lr)

    layer = cast(nn.Linear, net[0])

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            y_hat = net(features)
            w, b = layer.weight, layer.bias
            return epoch_numbers(loss(y_hat, labels), y_hat, labels, w, b, held)

    out = SeedsResult(epochs=[evaluate()])
    for _ in range(epochs):
        for X, y in loader:
            l = loss(net(X), y)  # noqa: E741
            trainer.zero_grad()
            l.backward()
            trainer.step()
        out.epochs.append(evaluate())
    out.w_hat, out.b_hat = layer.weight.data.reshape(-1).tolist(), float(layer.bias.data)
    return out


def least_squares(features, labels, held: Held) -> dict[str, float]:
    """The least-squares fit of the training data: its errors and MSEs (the floor)."""
    A = torch.cat([features, torch.ones(len(features), 1)], 1)
    theta = torch.linalg.lstsq(A, labels).solution
    out = {
        "ols_w_error": float(torch.linalg.vector_norm(theta[:-1, 0] - torch.tensor(TRUE_W))),
        "ols_b_error": abs(float(theta[-1, 0]) - TRUE_B),
        "ols_mse": float(((A @ theta - labels) ** 2).mean()),
    }
    if held is not None:
        X_val, y_val = held
        out["ols_val_mse"] = float(((X_val @ theta[:-1] + theta[-1] - y_val) ** 2).mean())
    return out


def seeds_train(
    model: str,
    loss: str,
    reduction: str,
    lr: float,
    batch_size: int,
    epochs: int,
    n: int,
    n_val: int = 0,
) -> SeedsResult:
    """One config trained by the seeds' code: ``model`` scratch (3.2) or linear (3.3), ``loss``
    mse or huber (δ = 1), ``reduction`` mean or sum; with ``n_val`` held-out examples of the
    same law, their MSE after every epoch too."""
    features, labels = synthetic_data(torch.tensor(TRUE_W), TRUE_B, n)
    held = synthetic_data(torch.tensor(TRUE_W), TRUE_B, n_val) if n_val else None
    fn: Callable[..., SeedsResult] = scratch if model == "scratch" else concise
    result = fn(loss, reduction, lr, batch_size, epochs, features, labels, held)
    result.ols = least_squares(features, labels, held)
    tensors = [features, labels, *(held or ())]
    result.data_mb = sum(t.numel() * t.element_size() for t in tensors) / 1e6
    return result
