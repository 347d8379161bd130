"""Theory lines for the report: linear regression trained by minibatch SGD.

Pure functions of a run's data and params (numpy only; tensors are accepted wherever an array
is). Model: y = xᵀw + b + ε with x ~ N(0, I_d), ε ~ N(0, σ²); z = (x, 1) ∈ R^{d+1},
θ = (w, b), e = θ − θ* (θ* the truth, or the OLS/M-estimate on the training data).

Every update rule of the project is the MSE-mean update with an *effective* learning rate
(:func:`effective_lr`): the MSE-mean step is θ ← θ − η (2/B) Σ z (zᵀθ − y), d2l's ½-squared
loss halves the gradient (η → η/2), a sum reduction multiplies it by the batch length
(η → ηB), and Huber with every residual inside δ is the ½-squared loss. So each formula is
written once for MSE mean in terms of ``lr_eff``, and the per-loss bounds are
``bound_mse_mean / loss_scale``.

Checked against real training in ``docs/theory_check.md`` (``python -m pipeline.theory_check``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _norm() -> Any:
    """scipy's normal distribution, imported when first needed: scipy.stats costs about a
    second to import, and training uses this module (the noise-floor tolerance of each run's
    outcome) in every job process without needing it."""
    from scipy import stats

    return stats.norm


#: log-log slope of the OLS error against n (E‖ŵ − w‖ ∝ n^−½)
OLS_SLOPE = -0.5


# --- losses and reductions ----------------------------------------------------------------


def _name(x: Any) -> str:
    """'mse' for 'mse' and for an enum member whose value is 'mse'."""
    return str(getattr(x, "value", x))


def loss_scale(loss: Any = "mse", reduction: Any = "mean", batch_size: int = 1) -> float:
    """Factor c with: one update of (loss, reduction) at lr η = one MSE-mean update at c·η.

    MSE mean 1; ½-squared (d2l ``squared_loss``) and Huber inside δ: ½ (gradient r instead of
    2r); a sum reduction: × batch_size (the gradient is B times the mean's). Assumes the batch
    has its nominal length (a partial last batch with ``sum`` has a smaller factor)."""
    loss, reduction = _name(loss), _name(reduction)
    if loss not in ("mse", "squared", "huber"):
        raise ValueError(f"unknown loss {loss!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}")
    c = 1.0 if loss == "mse" else 0.5
    return c * batch_size if reduction == "sum" else c


def effective_lr(
    lr: float, loss: Any = "mse", reduction: Any = "mean", batch_size: int = 1
) -> float:
    """The MSE-mean learning rate that makes the same updates: ``lr * loss_scale(...)``."""
    return lr * loss_scale(loss, reduction, batch_size)


# --- data ---------------------------------------------------------------------------------


def design(X: Any) -> np.ndarray:
    """Z = [X, 1] as float64 (n, d+1)."""
    X = np.asarray(X, dtype=np.float64)
    return np.hstack([X, np.ones((len(X), 1))])


def gram(X: Any) -> np.ndarray:
    """ZᵀZ/n with Z = [X, 1]: the MSE-mean Hessian is H = 2·gram(X)."""
    Z = design(X)
    return Z.T @ Z / len(Z)


def lambda_max(X: Any = None, *, gram_matrix: Any = None) -> float:
    """Largest eigenvalue of ZᵀZ/n (from X, or from a given ZᵀZ/n). ≈ 1 + O(√(d/n)) for
    standard-normal features; exactly 1 for the population."""
    G = gram(X) if gram_matrix is None else np.asarray(gram_matrix, dtype=np.float64)
    return float(np.linalg.eigvalsh(G)[-1])


def lambda_min(X: Any = None, *, gram_matrix: Any = None) -> float:
    """Smallest eigenvalue of ZᵀZ/n: sets the slowest transient mode (small n)."""
    G = gram(X) if gram_matrix is None else np.asarray(gram_matrix, dtype=np.float64)
    return float(np.linalg.eigvalsh(G)[0])


# --- 1. stability bounds ------------------------------------------------------------------


def full_batch_bound(
    X: Any = None,
    loss: Any = "mse",
    reduction: Any = "mean",
    batch_size: int = 1,
    *,
    gram_matrix: Any = None,
) -> float:
    """Largest stable lr of gradient descent on the expected (full-data) gradient.

    MSE mean: H = (2/n)ZᵀZ, GD is stable iff η < 2/λmax(H) = 1/λmax(ZᵀZ/n). ½-squared (and
    Huber with all residuals inside δ): twice that. Sum reduction over batches of B: the
    expected gradient is B × the mean's, so the bound is divided by B. Deterministic: says
    nothing about the extra variance of minibatch steps (see :func:`minibatch_bound`)."""
    lam = lambda_max(X, gram_matrix=gram_matrix)
    return 1.0 / lam / loss_scale(loss, reduction, batch_size)


def fourth_moment_matrix(d: int) -> np.ndarray:
    """K_ij = E[z_i² z_j²] for z = (x, 1), x ~ N(0, I_d): 3 on the x diagonal, 1 elsewhere.
    It maps the diagonal of a second moment Σ through E[z zᵀ Σ z zᵀ] (Isserlis)."""
    K = np.ones((d + 1, d + 1))
    K[np.arange(d), np.arange(d)] = 3.0
    return K


def fourth_moment_lambda(d: int) -> float:
    """μ = λmax(K) = (d + 3 + √((d+3)² − 8))/2 (4.56 for d = 2). The row sums of K are
    d + 3 (x rows) and d + 1 (bias row), so d + 1 < μ < d + 3; theory.md uses d + 3."""
    return (d + 3 + math.sqrt((d + 3) ** 2 - 8)) / 2


def minibatch_bound(
    d: int,
    batch_size: int,
    loss: Any = "mse",
    reduction: Any = "mean",
    *,
    exact: bool = False,
) -> float:
    """Mean-square stability bound of minibatch SGD (batches drawn with replacement from
    Gaussian features): E‖e‖² contracts iff, for MSE mean,

        η < 1 / (1 + (d + 2)/B)           (B = 1: 0.2, B = 10: 0.71, B = 100: 0.96 for d = 2)

    from E[(I − 2ηĤ)²] = I − 4ηI + 4η²((1 − 1/B)I + E[‖z‖² zzᵀ]/B), E[‖z‖² x_i²] = d + 3.
    ``exact=True`` uses the largest eigenvalue μ of the diagonal second-moment map instead of
    the row sum d + 3: η < 1/(1 + (μ − 1)/B) (B = 1: 0.22 for d = 2), which is the exact
    mean-square bound for this feature law. Divided by :func:`loss_scale` for other losses and
    reductions. Mean-square bounds are conservative for single runs: a run can survive a
    few epochs somewhat above it (almost-sure stability holds up to a larger lr)."""
    mu = fourth_moment_lambda(d) if exact else d + 3.0
    bound = 1.0 / (1.0 + (mu - 1.0) / batch_size)
    return bound / loss_scale(loss, reduction, batch_size)


# --- 2. noise floor -----------------------------------------------------------------------


def finite_population_factor(n: int, batch_size: int) -> float:
    """(n − B)/(n − 1): variance of a without-replacement batch mean relative to an iid one.
    0 for the full batch (B = n): gradient descent has no noise floor."""
    if n <= 1:
        return 0.0
    return max(n - batch_size, 0) / (n - 1)


def noise_floor_var(
    lr: float,
    batch_size: int,
    d: int,
    sigma: float,
    n: int | None = None,
    loss: Any = "mse",
    reduction: Any = "mean",
) -> float:
    """Per-coordinate stationary variance v of constant-lr SGD around the optimum:

        v = η σ² / (B − η(B + d + 2))  · (n − B)/(n − 1)     (MSE mean; ≈ ησ²/(B(1 − η)))

    with η = :func:`effective_lr` (½-squared η/2, sum ηB). Assumes Gaussian features, additive
    noise of variance σ² at the optimum, and the row-sum closure of :func:`minibatch_bound`
    (it is the stationary point of E‖e‖²: 4ηv(1 − η(1 + (d+2)/B)) = 4η²σ²/B). ``n`` given:
    times the finite-population factor (batches without replacement); ``n=None``: iid batches.
    It ignores the correlation between the batches of one reshuffled epoch (their gradients sum
    to zero at the OLS point), which lowers the floor: see :func:`reshuffle_factor`.
    inf at or above the mean-square bound."""
    eta = effective_lr(lr, loss, reduction, batch_size)
    denom = batch_size - eta * (batch_size + d + 2)
    if denom <= 0:
        return math.inf
    v = eta * sigma**2 / denom
    return v * (finite_population_factor(n, batch_size) if n is not None else 1.0)


def noise_floor_var_exact(
    lr: float,
    batch_size: int,
    d: int,
    sigma: float,
    n: int | None = None,
    loss: Any = "mse",
    reduction: Any = "mean",
) -> np.ndarray:
    """Per-coordinate stationary variances (d weights, then the bias) without the row-sum
    closure: the stationary point of the diagonal second-moment map, with f the finite
    population factor (1 for iid batches):

        [(1 − η) I − (η f / B)(K − I)] s = (η σ² f / B) 1,   K = :func:`fourth_moment_matrix`.

    Same assumptions as :func:`noise_floor_var` otherwise (same reshuffling caveat)."""
    eta = effective_lr(lr, loss, reduction, batch_size)
    f = finite_population_factor(n, batch_size) if n is not None else 1.0
    K = fourth_moment_matrix(d)
    eye = np.eye(d + 1)
    M = (1 - eta) * eye - (eta * f / batch_size) * (K - eye)
    rhs = np.full(d + 1, eta * sigma**2 * f / batch_size)
    if f == 0:
        return np.zeros(d + 1)
    if np.linalg.eigvals(M).real.min() <= 0:
        return np.full(d + 1, math.inf)
    return np.linalg.solve(M, rhs)


def reshuffle_factor(lr: float, n: int, batch_size: int) -> float:
    """Floor of reshuffled epochs / floor of the iid (finite-population) formula, at epoch ends.

    One epoch of m = ⌈n/B⌉ batches partitions the data, so at the OLS point its m batch
    gradients ξ_t sum to zero (exchangeable, Cov(ξ_s, ξ_t) = −Var ξ/(m − 1)). Treating H ≈ I,
    the noise an epoch leaves is Σ a_t ξ_t with a_t = ρ^t, ρ = 1 − 2η (η = effective lr), of
    variance Var ξ · m/(m − 1) · Σ(a_t − ā)², against Var ξ · Σ a_t² for independent batches:

        R = m/(m − 1) · Σ(a_t − ā)² / Σ a_t²     (→ 1 for mη ≫ 1, ≈ (mη)²/3 for mη ≪ 1)

    An approximation (first order in the multiplicative noise); m = 1 (full batch) gives 0."""
    m = -(-n // batch_size)
    if m <= 1:
        return 0.0
    rho = 1.0 - 2.0 * lr
    a = rho ** np.arange(m)
    s2 = float((a**2).sum())
    return float(m / (m - 1) * ((a - a.mean()) ** 2).sum() / s2) if s2 > 0 else 1.0


def gradient_noise_sq(
    lr: float,
    batch_size: int,
    d: int,
    sigma: float,
    n: int | None = None,
    loss: Any = "mse",
    reduction: Any = "mean",
) -> tuple[float, float]:
    """(E‖∇w‖², E(∇b)²) of the minibatch gradient once constant-lr SGD sits at its floor.

    At θ = θ̂ + e the batch gradient is c·(Ĥe − (1/B)Σ z_i ε_i), c = 2·:func:`loss_scale`
    (2 for MSE mean, 1 for ½-squared, ×B for a sum). Its second moment has two parts:
    the label noise, c²·fσ²/B per coordinate (f the finite-population factor), which does not
    shrink as training goes on; and the iterate's own fluctuation e (variances s_k of
    :func:`noise_floor_var_exact`) seen through Ĥ: for a weight, s_j(1 + 2f/B) + f·Σ_{k≠j}s_k/B;
    for the bias, s_b + f·Σ_w s_k/B (Gaussian features: Var(x²) = 2, Var(x_j x_k) = 1).
    The second part is O(η) of the first. Full batch (B = n): 0 (gradient descent converges)."""
    f = finite_population_factor(n, batch_size) if n is not None else 1.0
    s = noise_floor_var_exact(lr, batch_size, d, sigma, n, loss, reduction)
    if not np.all(np.isfinite(s)):
        return math.inf, math.inf
    c2 = (2 * loss_scale(loss, reduction, batch_size)) ** 2
    total = float(s.sum())
    label = f * sigma**2 / batch_size
    w = sum(s[j] * (1 + 2 * f / batch_size) + f * (total - s[j]) / batch_size for j in range(d))
    b = s[d] + f * float(s[:d].sum()) / batch_size
    return c2 * (float(w) + d * label), c2 * (float(b) + label)


# --- 3. OLS -------------------------------------------------------------------------------


def ols_error_sq(d: int, n: int, sigma: float, *, exact: bool = True) -> float:
    """E‖ŵ_OLS − w‖² over the d weights, model fitted with an intercept, Gaussian features:
    σ² tr E[(X_cᵀX_c)⁻¹] = d σ²/(n − d − 2) (X_cᵀX_c ~ Wishart(n − 1, I_d)); ``exact=False``:
    the large-n form d σ²/n. inf when n ≤ d + 2."""
    if not exact:
        return d * sigma**2 / n
    return d * sigma**2 / (n - d - 2) if n > d + 2 else math.inf


def ols_error(d: int, n: int, sigma: float, *, exact: bool = True) -> float:
    """√ of :func:`ols_error_sq`: ≈ σ √(d/n), log-log slope :data:`OLS_SLOPE` = −½ in n."""
    return math.sqrt(ols_error_sq(d, n, sigma, exact=exact))


def ols_train_mse(d: int, n: int, sigma: float) -> float:
    """E[training MSE] of least squares with an intercept, p = d + 1 parameters:
    σ²(n − p)/n (the residual sum of squares is σ²χ²_{n−p}); 0 once p ≥ n, where the fit
    interpolates the training data. Below σ²: the fit follows part of the noise."""
    return sigma**2 * max(n - d - 1, 0) / n


def ols_val_mse(d: int, n: int, sigma: float, signal_sq: float = 0.0) -> float:
    """E[MSE on fresh data] of the least-squares fit (with an intercept), Gaussian features.

    p = d + 1 < n − 1: σ²(1 + 1/n)(n − 2)/(n − d − 2) (exact: the new point's noise σ², the
    weights' error σ² tr E[(X_cᵀX_c)⁻¹] = dσ²/(n − d − 2) as in :func:`ols_error_sq`, the
    intercept's σ²/n, and x̄'s share (1/n) of the weights' error). It grows without bound as
    p → n: the classic peak at the interpolation threshold.

    p > n + 1: the minimum-norm interpolant (what gradient descent from θ ≈ 0 reaches),
    σ² + ‖θ‖²(1 − n/p) + σ² n/(p − n − 1) with ‖θ‖² = ``signal_sq`` = ‖w‖² + b² (exact for
    isotropic Gaussian features, Belkin, Hsu & Xu 2019; the intercept's constant feature has
    the same second moment 1 and is treated like the others: approximate, within the seeds'
    spread at d = 60 … 150, n = 50 over 40 seeds). It falls again past the peak while the
    variance term σ² n/(p − n − 1) dominates, then rises as the signal is spread over more
    features (double descent). inf for n − 1 ≤ p ≤ n + 1."""
    p = d + 1
    if p < n - 1:
        return sigma**2 * (1 + 1 / n) * (n - 2) / (n - d - 2)
    if p > n + 1:
        return sigma**2 + signal_sq * (1 - n / p) + sigma**2 * n / (p - n - 1)
    return math.inf


def expected_w_error_sq(
    lr: float,
    batch_size: int,
    d: int,
    sigma: float,
    n: int,
    loss: Any = "mse",
    reduction: Any = "mean",
    *,
    reshuffled: bool = False,
    exact: bool = False,
) -> float:
    """E‖ŵ − w‖² of constant-lr SGD at its floor against the *true* weights:

        d · v · (n − B)/(n − 1)  +  d σ²/(n − d − 2)

    (SGD's fluctuation around the OLS point, plus the OLS point's own error; independent).
    The sum runs over the d weights only — w_error = ‖ŵ − w‖ leaves out the bias — so it is
    d·v, not (d + 1)·v. ``exact``: the w entries of :func:`noise_floor_var_exact` instead of
    d·v; ``reshuffled``: times :func:`reshuffle_factor` (reshuffled epochs, read at epoch ends).
    """
    if exact:
        sgd = float(noise_floor_var_exact(lr, batch_size, d, sigma, n, loss, reduction)[:d].sum())
    else:
        sgd = d * noise_floor_var(lr, batch_size, d, sigma, n, loss, reduction)
    if reshuffled and math.isfinite(sgd):
        sgd *= reshuffle_factor(effective_lr(lr, loss, reduction, batch_size), n, batch_size)
    return sgd + ols_error_sq(d, n, sigma)


def expected_w_error(*args: Any, **kwargs: Any) -> float:
    """√ of :func:`expected_w_error_sq` (same arguments): the theory line for the RMS of the
    final w_error over seeds."""
    return math.sqrt(expected_w_error_sq(*args, **kwargs))


# --- transient ----------------------------------------------------------------------------


def transient_updates(
    e0: float,
    floor: float,
    lr: float,
    batch_size: int = 1,
    d: int | None = None,
    loss: Any = "mse",
    reduction: Any = "mean",
    *,
    margin: float = 1.0,
    lam_min: float | None = None,
) -> float:
    """Updates for the transient ‖e₀‖·(decay)^t to fall to ``margin · floor``.

    ``d=None``: the deterministic rate of theory.md, (1 − 2η)^t → t ≈ ln(‖e₀‖/floor)/(2η)
    (MSE mean, H ≈ 2I; η = effective lr). With ``d``: the mean-square rate
    ρ² = 1 − 4η + 4η²(1 + (d + 2)/B), t = ln(‖e₀‖/(margin·floor)) / (−½ ln ρ²), which is also
    right near the bound (η = 0.2, B = 1, d = 2: ρ² = 1, the transient never decays). inf at or
    above the mean-square bound. Both assume H ≈ 2I (ZᵀZ/n ≈ I, fine for n ≳ 100); for small
    n give ``lam_min`` = λmin(ZᵀZ/n) (:func:`lambda_min`): the slowest mode decays like
    |1 − 2ηλmin|^t, and the slower of the two rates is used."""
    eta = effective_lr(lr, loss, reduction, batch_size)
    target = margin * floor
    if target <= 0 or e0 <= target:
        return 0.0
    if d is None:
        rate = 2.0 * eta
    else:
        rho2 = 1 - 4 * eta + 4 * eta**2 * (1 + (d + 2) / batch_size)
        if rho2 >= 1:
            return math.inf
        rate = -0.5 * math.log(max(rho2, 1e-300))
    if lam_min is not None:
        slow = abs(1 - 2 * eta * lam_min)
        if slow >= 1:
            return math.inf
        rate = min(rate, -math.log(max(slow, 1e-300)))
    return math.log(e0 / target) / rate


# --- 4. Huber and outliers ----------------------------------------------------------------


def _gauss_psi(tau: float, delta: float) -> tuple[float, float]:
    """E[ψ²], E[ψ'] for r ~ N(0, τ²), ψ = clip(r, −δ, δ)."""
    if tau == 0:
        return 0.0, 1.0
    u = delta / tau
    inside = 2 * _norm().cdf(u) - 1
    e_psi2 = tau**2 * (inside - 2 * u * _norm().pdf(u)) + delta**2 * (1 - inside)
    return float(e_psi2), float(inside)


def huber_moments(
    sigma: float, delta: float, fraction: float = 0.0, scale: float = 0.0
) -> tuple[float, float]:
    """(E[ψ²], E[ψ']) of Huber's ψ = clip(r, −δ, δ) at the truth, residuals from the mixture
    (1 − p) N(0, σ²) + p N(0, σ² + s²) (the project's outliers: a fraction p of labels gets
    extra N(0, s²)). Exact Gaussian integrals."""
    a2, a1 = _gauss_psi(sigma, delta)
    b2, b1 = _gauss_psi(math.sqrt(sigma**2 + scale**2), delta)
    p = fraction
    return (1 - p) * a2 + p * b2, (1 - p) * a1 + p * b1


def effective_sigma2(
    loss: Any, sigma: float, fraction: float = 0.0, scale: float = 0.0, delta: float = 1.0
) -> float:
    """The σ² that the OLS and noise-floor formulas take for this loss and noise law.

    Squared losses: the residual variance σ² + p s². Huber (an M-estimator): its asymptotic
    covariance is (E[ψ²]/E[ψ']²)(ZᵀZ)⁻¹, so σ² → E[ψ²]/E[ψ']². With this σ² and the lr of
    :func:`huber_lr_eff`, the SGD floor formula holds for Huber too (to leading order).
    SmoothL1 with β = ``delta`` is Huber(δ = β)/β: the same minimiser, the same σ². L1 (least
    absolute deviations, ψ = sign): E[ψ²] = 1, E[ψ'] = 2 f(0) with f the residual density,
    so σ² → 1/(4 f(0)²) (πσ²/2 on clean data: 1.25× the OLS error)."""
    name = _name(loss)
    if name in ("huber", "smooth_l1"):
        e2, e1 = huber_moments(sigma, delta, fraction, scale)
        return e2 / e1**2
    if name == "l1":
        density = (1 - fraction) * _norm().pdf(0, scale=sigma) + fraction * _norm().pdf(
            0, scale=math.sqrt(sigma**2 + scale**2)
        )
        return 1 / (4 * density**2)
    return sigma**2 + fraction * scale**2


def huber_lr_eff(
    lr: float, sigma: float, delta: float, fraction: float = 0.0, scale: float = 0.0
) -> float:
    """MSE-mean-equivalent lr of Huber (mean reduction) near its optimum: η·E[ψ']/2 (the
    ½-squared's η/2, times the share of curvature from residuals inside δ)."""
    return lr * huber_moments(sigma, delta, fraction, scale)[1] / 2


def huber_estimator_error(
    d: int, n: int, sigma: float, delta: float, fraction: float = 0.0, scale: float = 0.0
) -> float:
    """Asymptotic √E‖ŵ − w‖² of the converged Huber M-estimate: √(d · E[ψ²]/E[ψ']² / n)
    (with n − d − 2 for n as in :func:`ols_error_sq`). Clean data with δ ≫ σ: = OLS error."""
    return ols_error(d, n, math.sqrt(effective_sigma2("huber", sigma, fraction, scale, delta)))


def estimator_error(
    loss: Any,
    d: int,
    n: int,
    sigma: float,
    delta: float = 1.0,
    fraction: float = 0.0,
    scale: float = 0.0,
) -> float:
    """Asymptotic √E‖ŵ − w‖² of the minimiser of ``loss`` (mse, squared, huber, smooth_l1,
    l1) on the data: the OLS error with σ² → :func:`effective_sigma2`."""
    return ols_error(d, n, math.sqrt(effective_sigma2(loss, sigma, fraction, scale, delta)))


def huber_reach_updates(distance: float, lr: float, delta: float) -> float:
    """Far from the optimum each Huber step (mean reduction) moves θ by at most η·δ·E‖z‖:
    ≈ distance/(η δ) updates before the quadratic regime starts — a lower bound on how long a
    Huber run needs; unconverged Huber runs say nothing about robustness."""
    return distance / (lr * delta)


# --- helpers for answers --------------------------------------------------------------------


def loglog_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of log y against log x (−½ for the OLS error against n)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


def excess_loss_at_floor(
    lr: float,
    batch_size: int,
    d: int,
    sigma: float,
    n: int | None = None,
    loss: Any = "mse",
    reduction: Any = "mean",
) -> float:
    """Expected full-data loss above the minimum at the floor: c·(d + 1)·v with c = 1 for MSE
    and ½ for ½-squared (mean reduction; the mean r² exceeds its minimum by eᵀ(ZᵀZ/n)e). A
    tolerance for :func:`pipeline.stats.converged`."""
    v = noise_floor_var(lr, batch_size, d, sigma, n, loss, reduction)
    c = 1.0 if _name(loss) == "mse" else 0.5
    return c * (d + 1) * v


def updates_to_floor(
    lr: float,
    batch_size: int,
    n: int,
    d: int,
    sigma: float,
    e0: float,
    loss: Any = "mse",
    reduction: Any = "mean",
    *,
    margin: float = 0.05,
    lam_min: float | None = None,
) -> int:
    """Updates before a constant-lr run's error is its floor: the transient down to ``margin``
    × :func:`expected_w_error` (mean-square rate, :func:`transient_updates`), plus 3
    relaxation times 3/(2η) for the fluctuation to reach its stationary size (η effective).
    From then on the epoch-end w_errors of a run are draws of its floor (use them all:
    :func:`pipeline.stats.tail_rms`)."""
    eta = effective_lr(lr, loss, reduction, batch_size)
    target = expected_w_error(lr, batch_size, d, sigma, n, loss, reduction)
    t = transient_updates(
        e0, target, lr, batch_size, d, loss, reduction, margin=margin, lam_min=lam_min
    )
    return math.ceil(t + 3 / (2 * eta * (lam_min or 1.0))) if math.isfinite(t) else 2**62
