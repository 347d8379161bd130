"""Training results: the book's numbers, scratch == nn.Linear, mean vs sum, partial batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.steps import LinearStep, ScratchStep
from pipeline.train import History, train_one
from tests.conftest import compose_cfg

THETA0 = torch.tensor([[0.5, -0.2, 0.1]], dtype=torch.float64)  # [w, b] of one model


def curves(h: History) -> np.ndarray:
    return np.array([h.epochs[k] for k in ("mse", "w_error", "b_error")])


@pytest.mark.parametrize("seed", range(5))
def test_default_run_reaches_the_books_accuracy(seed: int) -> None:
    h = train_one(compose_cfg(f"seed={seed}"))
    assert len(h.epochs["mse"]) == 4 and h.updates == 300
    assert h.epochs["mse"][-1] < 2e-4
    assert h.epochs["w_error"][-1] < 5e-3
    # the noise sets the floor: sigma^2 = 1e-4, and OLS cannot do much better than SGD here
    assert h.epochs["mse"][-1] > 5e-5 and h.ols_w_error < 5e-3


def test_scratch_squared_loss_reaches_the_books_loss() -> None:
    h = train_one(compose_cfg("model=scratch", "loss=squared"))
    assert h.epochs["train_loss"][-1] < 1e-4
    assert math.isclose(h.epochs["train_loss"][-1], h.epochs["mse"][-1] / 2, rel_tol=1e-12)


@pytest.mark.parametrize("loss", ["squared", "mse", "huber"])  # l1, smooth_l1: test_stacked
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_scratch_and_linear_trajectories_agree(loss: str, reduction: str) -> None:
    lr = "0.03" if reduction == "mean" else "0.003"
    common = (f"loss={loss}", f"loss.reduction={reduction}", f"optim.lr={lr}", "seed=3")
    s = train_one(compose_cfg("model=scratch", *common))
    n = train_one(compose_cfg("model=linear", *common))
    np.testing.assert_allclose(s.epochs["train_loss"], n.epochs["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(curves(s), curves(n), rtol=1e-5)
    np.testing.assert_allclose(s.batch_loss, n.batch_loss, rtol=1e-5)
    for key in ("grad_norm", "grad_norm_w", "grad_norm_b"):
        np.testing.assert_allclose(getattr(s, key), getattr(n, key), rtol=1e-5)
    assert s.steps == n.steps


@pytest.mark.parametrize("model", ["scratch", "linear"])
@pytest.mark.parametrize("batch_size", [10, 50])
def test_sum_with_lr_over_b_reproduces_mean(model: str, batch_size: int) -> None:
    common = (f"model={model}", f"train.batch_size={batch_size}", "seed=1")
    mean = train_one(compose_cfg(*common, "optim.lr=0.03"))
    total = train_one(compose_cfg(*common, "loss.reduction=sum", f"optim.lr={0.03 / batch_size}"))
    np.testing.assert_allclose(curves(total), curves(mean), rtol=1e-5)
    # the summed loss is n times the mean on the full data, B times on a batch
    np.testing.assert_allclose(
        total.epochs["train_loss"], np.array(mean.epochs["train_loss"]) * 1000, rtol=1e-5
    )
    np.testing.assert_allclose(total.batch_loss, np.array(mean.batch_loss) * batch_size, rtol=1e-5)


def test_unscaled_sum_is_a_much_larger_step() -> None:
    # sum with the mean's lr is lr*B in disguise: at B=100 it diverges
    h = train_one(compose_cfg("loss.reduction=sum", "train.batch_size=100"))
    assert h.diverged and h.final_mse == math.inf


@pytest.mark.parametrize("model", ["scratch", "linear"])
def test_partial_last_batch_is_kept_and_averaged_over_its_real_length(model: str) -> None:
    # n=1000, B=300: batches 300, 300, 300, 100
    h = train_one(compose_cfg(f"model={model}", "train.batch_size=300", "train.epochs=2"))
    assert h.updates == 8


def test_partial_batch_mean_divides_by_real_length() -> None:
    # nn.MSELoss(mean) divides by the real length; the scratch model matches it, with a lr big
    # enough that dividing the 100-sample batch by the nominal 300 would show.
    common = ("train.batch_size=300", "optim.lr=0.5", "train.epochs=2")
    s = train_one(compose_cfg("model=scratch", *common))
    n = train_one(compose_cfg("model=linear", *common))
    np.testing.assert_allclose(curves(s), curves(n), rtol=1e-5)
    # early in training (small lr, losses still large and slowly falling) the 4th batch's loss
    # is a mean over its 100 samples: close to its neighbours, not a third of them as a
    # division by the nominal B = 300 would make it
    slow = train_one(compose_cfg("model=scratch", "train.batch_size=300", "optim.lr=0.01"))
    ratios = np.array(slow.batch_loss[3:5]) / np.array(slow.batch_loss[2:4])
    assert ((ratios > 0.6) & (ratios < 1.6)).all(), ratios  # a /300 would give about 0.33


@pytest.mark.parametrize("model", ["scratch", "linear"])
def test_drop_last_drops_the_partial_batch(model: str) -> None:
    h = train_one(
        compose_cfg(
            f"model={model}", "train.batch_size=300", "train.drop_last=true", "train.epochs=2"
        )
    )
    assert h.updates == 6
    same = train_one(compose_cfg(f"model={model}", "train.batch_size=250", "train.drop_last=true"))
    keep = train_one(compose_cfg(f"model={model}", "train.batch_size=250"))
    assert same.updates == keep.updates == 12  # B divides n: drop_last changes nothing
    assert same.epochs == keep.epochs


@pytest.mark.parametrize("init", ["normal", "zeros", "xavier", "kaiming"])
def test_every_init_converges(init: str) -> None:
    h = train_one(compose_cfg(f"init={init}"))
    assert h.epochs["w_error"][-1] < 5e-3


def test_kaiming_is_torchs_kaiming_normal_with_gain_1() -> None:
    from pipeline.data import make_generators
    from pipeline.train import init_params

    cfg = compose_cfg("init=kaiming", "data.true_w=[1.0,2.0,3.0,4.0]")
    w, b = init_params(cfg, 4, make_generators(cfg.seed).init)
    expected = torch.empty(1, 4, dtype=torch.float64)
    torch.nn.init.kaiming_normal_(
        expected, nonlinearity="linear", generator=make_generators(cfg.seed).init
    )
    assert torch.equal(w, expected.reshape(-1)) and float(b) == 0.0
    # fan_in = d = 4 and gain 1: std 1/√4 over seeds (d2l's normal init: 0.01)
    draws = torch.stack([init_params(cfg, 4, make_generators(k).init)[0] for k in range(500)])
    assert float(draws.std()) == pytest.approx(0.5, rel=0.05)


def test_zero_init_starts_at_zero() -> None:
    h = train_one(compose_cfg("init=zeros"))
    assert h.epochs["w_error"][0] == pytest.approx(math.hypot(2.0, 3.4), rel=1e-12)


def test_huber_beats_mse_on_outliers() -> None:
    huber = train_one(compose_cfg("data=outliers", "loss=huber"))
    mse = train_one(compose_cfg("data=outliers", "loss=mse"))
    assert huber.epochs["w_error"][-1] < mse.epochs["w_error"][-1]


def test_same_seed_same_result_different_seed_different_data() -> None:
    a, b = train_one(compose_cfg("seed=7")), train_one(compose_cfg("seed=7"))
    c = train_one(compose_cfg("seed=8"))
    assert a.epochs == b.epochs and a.batch_loss == b.batch_loss
    assert a.epochs["mse"] != c.epochs["mse"]


def test_log_every_auto_caps_every_curve() -> None:
    # 0 = auto: B=1 for 5 epochs is 5000 updates -> every 50th; 1000 epochs -> every 5th (the
    # loop's cadence, the same in every engine: the stacked one runs these 10x faster)
    fast = "train.engine=stacked"
    h = train_one(compose_cfg("train.batch_size=1", "train.epochs=5", fast))
    assert h.steps == list(range(50, 5001, 50)) and len(h.epochs["mse"]) == 6
    long = train_one(
        compose_cfg("train.batch_size=1000", "train.epochs=1000", "optim.lr=0.5", fast)
    )
    assert long.epoch_ids == list(range(0, 1001, 5)) and len(long.steps) == 100


def test_nominal_reduction_shortens_the_partial_batch_step() -> None:
    # d2l 3.2's sgd divides a batch's summed loss by the nominal B: the 100-sample last batch of
    # n=1000, B=300 counts a third; mean divides by its real length
    common = ("train.batch_size=300", "optim.lr=0.01", "train.log_every=1")
    nominal = train_one(compose_cfg("loss.reduction=nominal", *common))
    mean = train_one(compose_cfg(*common))
    assert nominal.batch_loss[:3] == pytest.approx(mean.batch_loss[:3], rel=1e-12)
    assert nominal.batch_loss[3] == pytest.approx(mean.batch_loss[3] / 3, rel=1e-12)


def test_log_every_thins_the_step_metrics() -> None:
    h = train_one(compose_cfg("train.log_every=7"))
    assert h.steps == list(range(7, 301, 7))
    assert len(h.batch_loss) == len(h.grad_norm) == len(h.steps)


def test_log_every_epochs_keeps_every_nth_epoch_and_the_last() -> None:
    # full batch for 25 epochs, logged every update: the epoch metrics every epoch ...
    common = ("train.batch_size=1000", "train.epochs=25", "train.log_every=1", "optim.lr=0.5")
    full = train_one(compose_cfg(*common))
    assert full.epoch_ids == list(range(26)) and full.steps == list(range(1, 26))
    # ... or every 10th and the last, the same values; the per-update curve is not touched
    thin = train_one(compose_cfg(*common, "train.log_every_epochs=10"))
    assert thin.epoch_ids == [0, 10, 20, 25] and thin.steps == full.steps
    for key, values in thin.epochs.items():
        assert values == [full.epochs[key][e] for e in thin.epoch_ids], key


def test_any_number_of_weights() -> None:
    h = train_one(compose_cfg("data.true_w=[1.0,-2.0,0.5,3.0]", "model=scratch"))
    assert len(h.w_hat) == 4 and h.epochs["w_error"][-1] < 5e-3


def test_divergence_stops_early_and_returns_inf() -> None:
    h = train_one(compose_cfg("optim.lr=5"))
    assert h.diverged and h.diverged_at_step is not None
    assert h.updates == h.diverged_at_step - 1 < 300
    assert h.final_mse == math.inf
    assert all(math.isfinite(v) for vs in h.epochs.values() for v in vs)


@pytest.mark.parametrize("loss", ["squared", "mse", "huber"])
def test_scratch_and_linear_gradients_are_equal_on_the_same_batch(loss: str) -> None:
    """d2l 3.3 exercise 3: the gradient lives in ``w.grad``/``b.grad`` (scratch) and in
    ``net[0].weight.grad``/``net[0].bias.grad`` (linear); both are the same numbers."""
    common = (f"loss={loss}", "seed=2")
    scratch = ScratchStep(compose_cfg("model=scratch", *common), THETA0)
    linear = LinearStep(compose_cfg("model=linear", *common), THETA0)
    X = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = X @ torch.tensor([2.0, -3.4], dtype=torch.float64) + 4.2
    # the batch loss, then backward() as each step does (their update() zeroes the grads after)
    scratch.batch_loss(X, y.reshape(-1, 1))
    linear.batch_loss(X, y.reshape(-1, 1))
    assert scratch._last is not None and linear._last is not None
    scratch._last.backward()
    linear._last.backward()
    w_grad, b_grad = scratch.w.grad, scratch.b.grad
    weight_grad, bias_grad = linear.net[0].weight.grad, linear.net[0].bias.grad
    assert w_grad is not None and b_grad is not None
    assert weight_grad is not None and bias_grad is not None
    assert float(w_grad.abs().max()) > 0.1  # far from the optimum: a real gradient
    torch.testing.assert_close(w_grad.reshape(-1), weight_grad.reshape(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(b_grad.reshape(-1), bias_grad.reshape(-1), rtol=1e-12, atol=0)


# --- held-out set, zero-weight features, weight decay ---------------------------------------

HELD_OUT = (
    "data.n=40",
    "data.noise=1.0",
    "data.zero_features=20",
    "data.n_val=200",
    "train.batch_size=8",
    "optim.lr=0.05",
    "optim.weight_decay=0.1",
    "train.epochs=4",
)


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_every_engine_logs_the_same_held_out_metrics(optim: str) -> None:
    from pipeline.train import VAL_METRICS, train

    common = (f"optim={optim}", *HELD_OUT)  # weight decay joins ∇w before either rule
    hists = {m: train_one(compose_cfg(f"model={m}", *common)) for m in ("scratch", "linear")}
    hists["stacked"] = train([compose_cfg("train.engine=stacked", *common)])[0]
    linear = hists["linear"]
    for h in hists.values():
        assert set(VAL_METRICS) <= h.epochs.keys() and len(h.epochs["val_mse"]) == 5
        gap = np.array(h.epochs["val_mse"]) - np.array(h.epochs["mse"])
        np.testing.assert_allclose(h.epochs["gap"], gap, rtol=1e-12)
        assert len(h.w_hat) == 22  # 2 true weights + 20 zero-weight features
        assert math.isfinite(h.ols_val_mse) and h.ols_mse < h.ols_val_mse  # 21 params, n = 40
        for key in linear.epochs:  # weight decay > 0: the three codes still agree
            np.testing.assert_allclose(h.epochs[key], linear.epochs[key], rtol=1e-9)
        np.testing.assert_allclose(h.grad_norm, linear.grad_norm, rtol=1e-9)


def test_the_held_out_stream_leaves_data_init_and_batches_as_they_were() -> None:
    import torch

    from pipeline.data import make_generators

    # what make_generators drew from before the validation stream was added: spawn(3)
    before = [
        torch.Generator().manual_seed(int(c.generate_state(1, np.uint64)[0]))
        for c in np.random.SeedSequence(7).spawn(3)
    ]
    now = make_generators(7)
    for old, new in zip(before, (now.data, now.init, now.batches), strict=True):
        assert torch.equal(torch.randn(8, generator=old), torch.randn(8, generator=new))
    # the held-out set's size changes nothing in training; n_val = 0 logs no val metrics
    none, some = train_one(compose_cfg("data.n_val=0")), train_one(compose_cfg("data.n_val=50"))
    assert none.w_hat == some.w_hat and none.epochs["mse"] == some.epochs["mse"]
    assert "val_mse" not in none.epochs and math.isnan(none.ols_val_mse)


def test_held_out_mse_is_the_models_population_mse() -> None:
    # fresh x ~ N(0, I), ε ~ N(0, σ²): E(ŷ − y)² = σ² + ‖ŵ − w‖² + (b̂ − b)²
    h = train_one(compose_cfg(*HELD_OUT[:3], "data.n_val=20000", "train.epochs=2"))
    expected = 1.0 + h.epochs["w_error"][-1] ** 2 + h.epochs["b_error"][-1] ** 2
    assert h.epochs["val_mse"][-1] == pytest.approx(expected, rel=0.05)  # 5 standard errors


@pytest.mark.parametrize("model", ["scratch", "linear"])
def test_weight_decay_converges_to_ridge_on_w_only(model: str) -> None:
    import torch

    from pipeline.data import make_generators, with_bias_column
    from pipeline.train import make_problem

    overrides = (*HELD_OUT[:3], "train.batch_size=40", "optim.weight_decay=1.0")
    cfg = compose_cfg(f"model={model}", *overrides, "optim.lr=0.1", "train.epochs=300")
    h = train_one(cfg)
    # the minimum of mean((Aθ − y)²) + weight_decay/2 · ‖w‖²: (2/n AᵀA + wd·D) θ = 2/n Aᵀy
    p = make_problem(cfg, make_generators(cfg.seed))
    A = with_bias_column(p.X)
    D = torch.eye(A.shape[1], dtype=A.dtype)
    D[-1, -1] = 0.0  # the bias is not decayed
    theta = torch.linalg.solve(2 / len(A) * A.T @ A + D, 2 / len(A) * A.T @ p.y).reshape(-1)
    np.testing.assert_allclose([*h.w_hat, h.b_hat], theta.tolist(), atol=1e-8)
