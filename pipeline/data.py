"""Synthetic data (d2l's ``synthetic_data``), seeding, and the closed-form least-squares floor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Generators:
    """One independent random stream per purpose, so that changing how batches are drawn never
    changes the data or the initial weights (and the two models can share all of them), and
    the held-out set never changes the training data."""

    data: torch.Generator
    init: torch.Generator
    batches: torch.Generator
    val: torch.Generator  # the held-out (validation) set


def _generator(seq: np.random.SeedSequence) -> torch.Generator:
    return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0]))


def make_generators(seed: int) -> Generators:
    # SeedSequence.spawn gives statistically independent child seeds from one user seed; child
    # i depends on (seed, i) only, so the 4th (val) left the first three, and the data, initial
    # weights and batches drawn from them, bit for bit what they were with spawn(3).
    return Generators(*(_generator(c) for c in np.random.SeedSequence(seed).spawn(4)))


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The generator of chunk ``chunk`` of a stream: child ``chunk`` of the seed's data stream
    (what ``SeedSequence(seed).spawn(4)[0].spawn(chunk + 1)[chunk]`` gives, built directly), so
    any chunk can be drawn again, alone, without drawing the ones before it."""
    return _generator(np.random.SeedSequence(seed, spawn_key=(0, chunk)))


def synthetic_data(
    true_w: torch.Tensor,
    true_b: float,
    n: int,
    noise: float,
    gen: torch.Generator,
    outlier_fraction: float = 0.0,
    outlier_scale: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y = Xw + b + N(0, noise^2), as d2l; optionally a fraction of labels gets heavy noise."""
    dtype = true_w.dtype
    X = torch.normal(0.0, 1.0, (n, len(true_w)), generator=gen, dtype=dtype)
    y = X @ true_w + true_b
    y += torch.normal(0.0, noise, y.shape, generator=gen, dtype=dtype)
    if outlier_fraction > 0:
        k = round(outlier_fraction * n)
        idx = torch.randperm(n, generator=gen)[:k]
        y[idx] += torch.normal(0.0, outlier_scale, (k,), generator=gen, dtype=dtype)
    return X, y.reshape(-1, 1)


def with_bias_column(X: torch.Tensor) -> torch.Tensor:
    """A = [X, 1], so that A @ [w, b] = Xw + b (the Hessian of the MSE is (2/n) AᵀA)."""
    return torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)


def ols(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form least squares (w, b): the floor any estimator can reach on this data. With
    d + 1 ≥ n (more parameters than examples) the SVD driver gelsd returns the minimum-norm
    solution ‖[w, b]‖ among the many that fit the data exactly: what gradient descent from
    θ = 0 converges to."""
    A = with_bias_column(X)
    sol = torch.linalg.lstsq(A, y, driver="gelsd").solution.reshape(-1)
    return sol[:-1], sol[-1]


class NormalEquations:
    """Least squares from sufficient statistics: AᵀA, Aᵀy and yᵀy (A = [X, 1]) summed chunk by
    chunk in float64, so the data never has to be held at once ((d+2)² numbers whatever n is).
    Solving them squares the condition number of A, which is harmless here (X ~ N(0, I):
    AᵀA ≈ n·I); lstsq on the whole A is what :func:`ols` does when the data fits. The SVD
    solve of AᵀA θ = Aᵀy gives the minimum-norm fit when d + 1 ≥ n, as :func:`ols` does
    (pinv(AᵀA)·Aᵀy = pinv(A)·y)."""

    def __init__(self, d: int):
        self.AtA = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        self.Aty = torch.zeros(d + 1, dtype=torch.float64)
        self.yty = torch.zeros((), dtype=torch.float64)
        self.n = 0

    def add(self, X: torch.Tensor, y: torch.Tensor) -> None:
        A, y = with_bias_column(X).double(), y.reshape(-1).double()
        self.AtA += A.T @ A
        self.Aty += A.T @ y
        self.yty += y @ y
        self.n += len(y)

    def solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, b) of the least-squares fit of every example added (float64)."""
        sol = torch.linalg.lstsq(self.AtA, self.Aty.reshape(-1, 1), driver="gelsd").solution
        return sol[:-1, 0], sol[-1, 0]

    def mse(self, w: torch.Tensor, b: torch.Tensor) -> float:
        """Mean squared error of (w, b) on every example added: (yᵀy − 2θᵀAᵀy + θᵀAᵀAθ)/n."""
        theta = torch.cat([w.double().reshape(-1), b.double().reshape(1)])
        sse = self.yty - 2 * theta @ self.Aty + theta @ self.AtA @ theta
        return float(sse) / self.n
