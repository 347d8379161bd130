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


def make_generators(seed: int) -> Generators:
    # SeedSequence.spawn gives statistically independent child seeds from one user seed; child
    # i depends on (seed, i) only, so the 4th (val) left the first three, and the data, initial
    # weights and batches drawn from them, bit for bit what they were with spawn(3).
    children = np.random.SeedSequence(seed).spawn(4)
    gens = [torch.Generator().manual_seed(int(c.generate_state(1, np.uint64)[0])) for c in children]
    return Generators(*gens)


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
