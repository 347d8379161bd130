"""Measure the formulas of :mod:`pipeline.theory` on real training (the stacked engine).

``python -m pipeline.theory_check [floor|bounds|huber|all] [--seeds K]`` prints the tables of
``docs/theory_check.md``. Nothing is logged to MLflow: configs are composed with Hydra once and
copied; configs that differ only in lr/loss stack into one computation per seed.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from pipeline import theory
from pipeline.config import PROJECT_ROOT, register_configs
from pipeline.data import make_generators
from pipeline.stats import converged, rms, tail_rms
from pipeline.train import History, make_problem, train

D, SIGMA, E0 = 2, 0.01, math.sqrt(2.0**2 + 3.4**2 + 4.2**2)  # d2l's problem, ‖θ₀ − θ*‖


def base_config(*overrides: str) -> DictConfig:
    """The real conf/ tree, composed once (log_every huge: no per-update logging)."""
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=["train.log_every=100000000", "train.engine=stacked", *overrides],
        )


def with_values(base: DictConfig, values: dict[str, Any]) -> DictConfig:
    cfg = copy.deepcopy(base)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def floor_epochs(lr: float, batch_size: int, n: int) -> int:
    """Epochs for a run to reach its floor (:func:`theory.updates_to_floor`) and then give
    at least 4 epoch-end draws of it."""
    m = -(-n // batch_size)
    return math.ceil(theory.updates_to_floor(lr, batch_size, n, D, SIGMA, E0) / m) + 3


def train_cells(
    base: DictConfig, cells: Sequence[dict[str, Any]], seeds: Iterable[int]
) -> pd.DataFrame:
    """Train every cell (dict of config keys) for every seed; cells whose keys other than
    optim.lr / loss.* agree stack together. One row per (cell, seed)."""
    rows: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        key = repr(sorted((k, v) for k, v in cell.items() if not k.startswith(("optim.", "loss."))))
        groups.setdefault(key, []).append(cell)
    for seed in seeds:
        for group in groups.values():
            cfgs = [with_values(base, {**cell, "seed": seed}) for cell in group]
            hists: list[History] = train(cfgs)
            for cell, h in zip(group, hists, strict=True):
                rows.append(
                    {
                        **cell,
                        "seed": seed,
                        "w_error": math.inf if h.diverged else h.epochs["w_error"][-1],
                        "ols_w_error": h.ols_w_error,
                        "diverged": h.diverged,
                        "updates": h.updates,
                        "loss0": h.epochs["train_loss"][0],
                        "loss_end": h.epochs["train_loss"][-1] if not h.diverged else math.inf,
                        "w_error_epochs": list(h.epochs["w_error"]),
                        "loss_epochs": list(h.epochs["train_loss"]),
                    }
                )
    return pd.DataFrame(rows)


def floor_table(seeds: int = 16, lrs: Sequence[float] = (0.01, 0.03, 0.1, 0.3)) -> pd.DataFrame:
    """RMS of the final w_error over seeds against √(d·v·fpc + dσ²/(n−d−2)), MSE mean, for
    every (lr, B, n) of the grid (lr at or above the mean-square bound: skipped), plus
    ½-squared and sum for one cell."""
    base = base_config()
    cells: list[dict[str, Any]] = []
    for n in (100, 1000, 10000):
        for B in (1, 10, 100):
            if n < B:
                continue
            ok = [lr for lr in lrs if lr < theory.minibatch_bound(D, B)]
            epochs = max(floor_epochs(lr, B, n) for lr in ok)
            for lr in ok:
                cells.append(
                    {"data.n": n, "train.batch_size": B, "train.epochs": epochs, "optim.lr": lr}
                )
    extra = {"data.n": 1000, "train.batch_size": 10, "train.epochs": 30}
    cells.append({**extra, "optim.lr": 0.06, "loss.name": "squared"})
    cells.append({**extra, "optim.lr": 0.003, "loss.reduction": "sum"})
    cells.append({**extra, "optim.lr": 0.03})
    df = train_cells(base, cells, range(seeds))
    return summarize_floor(df)


def summarize_floor(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell: theory √(d·v·fpc + dσ²/(n−d−2)) and three measured/theory ratios:
    ``ratio``: RMS over seeds of the final w_error (the issue's definition);
    ``ratio_tail``: RMS over seeds and over the epoch ends at the floor (from
    :func:`theory.updates_to_floor`), against √(d·v·fpc + the runs' own OLS error²);
    ``ratio_rr``: as ratio_tail, floor times :func:`theory.reshuffle_factor`.
    ``tail_lo``/``tail_hi``: range of ratio_tail over disjoint blocks of 5 seeds."""
    df = df.copy()
    for col, default in (("loss.name", "mse"), ("loss.reduction", "mean")):
        df[col] = df[col].fillna(default) if col in df else default
    keys = ["loss.name", "loss.reduction", "optim.lr", "train.batch_size", "data.n"]
    out = []
    for key, g in df.groupby([*keys, "train.epochs"], sort=False):
        loss, red, lr, B, n, epochs = key
        g = g.sort_values("seed")
        lr_eff = theory.effective_lr(lr, loss, red, B)
        m = math.ceil(n / B)
        first = math.ceil(theory.updates_to_floor(lr, B, n, D, SIGMA, E0, loss, red) / m)
        theo = theory.expected_w_error(lr, B, D, SIGMA, n, loss, red)
        floor2 = D * theory.noise_floor_var(lr, B, D, SIGMA, n, loss, red)
        R = theory.reshuffle_factor(lr_eff, n, B)
        tail = np.array([tail_rms(w, min(first, len(w) - 1)) for w in g["w_error_epochs"]])
        own2 = g["ols_w_error"].to_numpy() ** 2

        def ratio_tail(
            idx: slice,
            r: float = 1.0,
            tail: np.ndarray = tail,
            own2: Any = own2,
            f2: float = floor2,
        ) -> float:
            return rms(tail[idx]) / math.sqrt(f2 * r + float(np.mean(own2[idx])))

        blocks = [ratio_tail(slice(i, i + 5)) for i in range(0, len(g) - 4, 5)]
        out.append(
            {
                "loss": loss,
                "red": red,
                "lr": lr,
                "B": B,
                "n": n,
                "epochs": epochs,
                "updates": int(g["updates"].max()),
                "first": first,
                "m·η": m * lr_eff,
                "R": R,
                "seeds": len(g),
                "div": int(g["diverged"].sum()),
                "floor": math.sqrt(floor2),
                "ols": theory.ols_error(D, n, SIGMA),
                "theory": theo,
                "measured": rms(g["w_error"]),
                "ratio": rms(g["w_error"]) / theo,
                "ratio_tail": ratio_tail(slice(None)),
                "tail_lo": min(blocks),
                "tail_hi": max(blocks),
                "ratio_rr": ratio_tail(slice(None), R),
            }
        )
    return pd.DataFrame(out)


def bounds_table(seeds: int = 12, batch_size: int = 10, epochs: int = 3) -> pd.DataFrame:
    """Largest lr that trains (no seed diverged) on a fine log grid (ratio 1.05), for MSE
    mean, ½-squared mean and MSE sum, against the full-batch bound of each seed's data and
    the mean-square bound."""
    base = base_config()
    grid = [float(x) for x in np.round(np.geomspace(0.1, 4.0, 77), 5)]
    specs = (("mse", "mean"), ("squared", "mean"), ("mse", "sum"))
    cells = []
    for loss, red in specs:
        scale = theory.loss_scale(loss, red, batch_size)
        for lr in grid:
            cells.append(
                {
                    "train.batch_size": batch_size,
                    "train.epochs": epochs,
                    "loss.name": loss,
                    "loss.reduction": red,
                    "optim.lr": lr / scale,
                }
            )
    df = train_cells(base, cells, range(seeds))
    out = []
    for loss, red in specs:
        g = df[(df["loss.name"] == loss) & (df["loss.reduction"] == red)]
        per_seed = g.groupby("seed").apply(
            lambda h: h.loc[~h["diverged"], "optim.lr"].max(), include_groups=False
        )
        fb = []
        for s in range(seeds):
            p = make_problem(with_values(base, {"seed": s}), make_generators(s))
            fb.append(theory.full_batch_bound(p.X.numpy(), loss, red, batch_size))
        out.append(
            {
                "loss": f"{loss}-{red}",
                "B": batch_size,
                "epochs": epochs,
                "seeds": seeds,
                "max_stable_min": per_seed.min(),
                "max_stable_max": per_seed.max(),
                "full_batch_min": min(fb),
                "full_batch_max": max(fb),
                "ms_bound": theory.minibatch_bound(D, batch_size, loss, red),
                "ms_bound_exact": theory.minibatch_bound(D, batch_size, loss, red, exact=True),
                "measured/full_batch": float(np.mean(np.asarray(per_seed) / np.asarray(fb))),
            }
        )
    return pd.DataFrame(out)


def huber_table(seeds: int = 16) -> pd.DataFrame:
    """Converged squared vs Huber: full-batch GD (lr 1, 150 epochs: the M-estimates
    themselves) and SGD (B 10, lr 0.03, 50 epochs), outlier fraction 0/5/20% at scale 10."""
    base = base_config()
    out = []
    for mode, B, lr, epochs in (("GD", 1000, 1.0, 150), ("SGD", 10, 0.03, 50)):
        cells: list[dict[str, Any]] = []
        for frac in (0.0, 0.05, 0.2):
            common = {"data.outliers.fraction": frac, "train.batch_size": B, "train.epochs": epochs}
            cells.append({**common, "loss.name": "squared", "optim.lr": lr})
            for delta in (0.1, 0.3, 1.0, 3.0):
                cells.append({**common, "loss.name": "huber", "loss.delta": delta, "optim.lr": lr})
        df = train_cells(base, cells, range(seeds))
        df["loss.delta"] = df["loss.delta"].fillna(0.0)
        sq: dict[float, float] = {}
        for (frac, loss, delta), g in df.groupby(
            ["data.outliers.fraction", "loss.name", "loss.delta"], sort=False
        ):
            huber = loss == "huber"
            s2 = theory.effective_sigma2(loss, SIGMA, frac, 10.0, delta)
            lr_eff = theory.huber_lr_eff(lr, SIGMA, delta, frac, 10.0) if huber else lr / 2
            est = theory.ols_error(D, 1000, math.sqrt(s2))
            fl2 = D * theory.noise_floor_var(lr_eff, B, D, math.sqrt(s2), 1000)
            fl2 *= theory.reshuffle_factor(lr_eff, 1000, B)
            theo = math.sqrt(est**2 + fl2)
            meas = rms(g["w_error"])
            if not huber:
                sq[frac] = meas
            out.append(
                {
                    "mode": mode,
                    "epochs": epochs,
                    "outliers": frac,
                    "loss": f"huber δ={delta:g}" if huber else "squared",
                    "seeds": len(g),
                    "converged": int(sum(converged(L) for L in g["loss_epochs"])),
                    "w_error_rms": meas,
                    "theory": theo,
                    "ratio": meas / theo,
                    "squared/this": sq[frac] / meas,
                }
            )
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="floor")
    parser.add_argument("--seeds", type=int, default=16)
    args = parser.parse_args()
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    t0 = time.perf_counter()
    fmt = {"float_format": lambda x: f"{x:.3g}", "index": False}
    if args.what in ("floor", "all"):
        print(floor_table(args.seeds).to_string(**fmt))
    if args.what in ("bounds", "all"):
        print(bounds_table().to_string(**fmt))
    if args.what in ("huber", "all"):
        print(huber_table(args.seeds).to_string(**fmt))
    print(f"# {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()


def faq_candidates() -> list[dict[str, Any]]:
    """Constant-lr cells a faq preset could use for its noise-floor answers (d2l defaults
    otherwise: n = 1000, B = 10, MSE mean)."""
    cells: list[dict[str, Any]] = []
    for lr in (0.01, 0.03, 0.1, 0.3):  # lr floor, 3000 updates
        cells.append({"data.n": 1000, "train.batch_size": 10, "train.epochs": 30, "optim.lr": lr})
    for B in (1, 100, 1000):  # batch size at equal updates (3000), lr 0.03
        cells.append(
            {"data.n": 1000, "train.batch_size": B, "train.epochs": 3 * B, "optim.lr": 0.03}
        )
    for n in (20, 50, 100, 200, 500, 2000, 5000, 10000):  # data size, B = 10, >= 3000 updates
        cells.append(
            {
                "data.n": n,
                "train.batch_size": 10,
                "train.epochs": max(3, -(-30000 // n)),
                "optim.lr": 0.03,
            }
        )
    for n in (10000,):  # lr floor at n = 10000 (m·η ≥ 10): 2 epochs = 2000 updates
        for lr in (0.01, 0.1, 0.3):
            cells.append({"data.n": n, "train.batch_size": 10, "train.epochs": 2, "optim.lr": lr})
    return cells


def group_ratios(df: pd.DataFrame, group: int = 5) -> pd.DataFrame:
    """Per cell: the ratio RMS/theory on seeds 0..group−1 (what a faq with ``group`` seeds
    would report) and over all disjoint blocks of ``group`` seeds: min, max, share outside
    [½, 2]."""
    keys = ["data.n", "train.batch_size", "train.epochs", "optim.lr"]
    out = []
    for key, g in df.groupby(keys, sort=False):
        n, B, epochs, lr = key
        theo = theory.expected_w_error(lr, B, D, SIGMA, n)
        g = g.sort_values("seed")
        blocks = [
            rms(g["w_error"].iloc[i : i + group]) / theo
            for i in range(0, len(g) - group + 1, group)
        ]
        b = np.asarray(blocks)
        out.append(
            {
                "n": n,
                "B": B,
                "epochs": epochs,
                "lr": lr,
                "updates": int(g["updates"].max()),
                "theory": theo,
                "ratio_all": rms(g["w_error"]) / theo,
                "ratio_rr": theo
                / theory.expected_w_error(lr, B, D, SIGMA, n, reshuffled=True)
                * rms(g["w_error"])
                / theo,
                "seeds": len(g),
                f"ratio_s0-{group - 1}": b[0],
                "block_min": b.min(),
                "block_max": b.max(),
                "blocks_out": float(((b < 0.5) | (b > 2)).mean()),
            }
        )
    return pd.DataFrame(out)
