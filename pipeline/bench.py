"""``make bench``: wall times and ratios, measured in one run on this machine.

Over the grid G (conf/sweep/bench.yaml, 120 configs, 3 epochs) it times:
  1. the seeds' own loops (a faithful re-implementation of the d2l 3.2/3.3 code as the seeds
     show it: Python-shuffled data_iter, per-sample DataLoader collation, float32), training only;
  2. our sequential training (the d2l steps of pipeline.train), no tracking;
  3. our stacked training (the stacked step), no tracking;
  4. MLflow's floor: bare create_run + one log_batch (our payload) + set_terminated per run;
  5. `make sweep` over G end to end with the basic, joblib and stacked launchers.
and prints the ratios the targets are stated in, and the peak memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from mlflow.entities import Param, RunTag
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils import data

from pipeline.bench_ray import sweep_seconds
from pipeline.config import PROJECT_ROOT, register_configs
from pipeline.identity import flatten, to_container
from pipeline.sweep import expand
from pipeline.tracking import get_client, history_metrics, run_tags
from pipeline.train import History, group_by_schedule, resolve_engine, train, train_one

# --- the seeds' loops (d2l 3.2 and 3.3, as printed in ../shared/seeds) ------------------------


def seeds_synthetic_data(w: torch.Tensor, b: float, num_examples: int):
    X = torch.normal(0, 1, (num_examples, len(w)))
    y = torch.matmul(X, w) + b
    y += torch.normal(0, 0.01, y.shape)
    return X, y.reshape((-1, 1))


def seeds_data_iter(batch_size, features, labels):
    num_examples = len(features)
    indices = list(range(num_examples))
    random.shuffle(indices)
    for i in range(0, num_examples, batch_size):
        batch_indices = torch.tensor(indices[i : min(i + batch_size, num_examples)])
        yield features[batch_indices], labels[batch_indices]


def seeds_scratch(cfg: DictConfig, features, labels, true_w) -> None:
    """d2l 3.2: per-sample loss, l.sum().backward(), sgd dividing by batch_size (the mean)."""
    batch_size, lr = cfg.train.batch_size, cfg.optim.lr
    w = torch.normal(0, 0.01, size=(len(true_w), 1), requires_grad=True)
    b = torch.zeros(1, requires_grad=True)

    def linreg(X, w, b):
        return torch.matmul(X, w) + b

    def loss(y_hat, y):
        r = y_hat - y.reshape(y_hat.shape)
        if cfg.loss.name.value == "huber":
            return torch.where(r.abs() < 1.0, 0.5 * r**2, r.abs() - 0.5)
        return r**2

    def sgd(params, lr, batch_size):
        with torch.no_grad():
            for param in params:
                param -= lr * param.grad / batch_size
                param.grad.zero_()

    divide = batch_size if cfg.loss.reduction.value == "mean" else 1
    for _ in range(cfg.train.epochs):
        for X, y in seeds_data_iter(batch_size, features, labels):
            l = loss(linreg(X, w, b), y)  # noqa: E741 (the book's name)
            l.sum().backward()
            sgd([w, b], lr, divide)
        with torch.no_grad():
            loss(linreg(features, w, b), labels).mean()


def seeds_concise(cfg: DictConfig, features, labels, true_w) -> None:
    """d2l 3.3: DataLoader(TensorDataset, shuffle=True), nn.Linear, nn losses, optim.SGD."""
    data_iter = data.DataLoader(
        data.TensorDataset(features, labels), cfg.train.batch_size, shuffle=True
    )
    net = nn.Sequential(nn.Linear(len(true_w), 1))
    net[0].weight.data.normal_(0, 0.01)  # type: ignore[operator]
    net[0].bias.data.fill_(0)  # type: ignore[operator]
    reduction = cfg.loss.reduction.value
    loss = nn.HuberLoss() if cfg.loss.name.value == "huber" else nn.MSELoss(reduction=reduction)
    trainer = torch.optim.SGD(net.parameters(), lr=cfg.optim.lr)
    for _ in range(cfg.train.epochs):
        for X, y in data_iter:
            l = loss(net(X), y)  # noqa: E741
            trainer.zero_grad()
            l.backward()
            trainer.step()
        loss(net(features), labels)


def seeds_loop(cfg: DictConfig) -> None:
    true_w = torch.tensor([2, -3.4])
    features, labels = seeds_synthetic_data(true_w, 4.2, cfg.data.n)
    fn = seeds_scratch if cfg.model.name.value == "scratch" else seeds_concise
    fn(cfg, features, labels, true_w)


# --- measurements -----------------------------------------------------------------------------


def grid_configs() -> list[DictConfig]:
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        full = compose("config", overrides=["sweep=bench"], return_hydra_config=True)
        grids = OmegaConf.to_container(full.hydra.sweeper.grids, resolve=False)
        assert isinstance(grids, dict)
        return [compose("config", overrides=overrides) for _, overrides in expand(grids, [])]  # type: ignore[arg-type]


def each(fn: Callable[[DictConfig], object], cfgs: list[DictConfig]) -> None:
    for cfg in cfgs:
        fn(cfg)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def mlflow_floor(cfgs: list[DictConfig], hists: list[History], store: Path) -> float:
    client = get_client(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.create_experiment("floor", artifact_location=(store / "art").as_uri())
    for c in cfgs:
        resolve_engine(c, stacking=False)
    payload = [
        (
            cfg,
            [Param(k, str(v)) for k, v in flatten(to_container(cfg)).items()],
            [RunTag(k, v) for k, v in run_tags(cfg, None).items()],
            history_metrics(h, int(time.time() * 1000)),
        )
        for cfg, h in zip(cfgs, hists, strict=True)
    ]

    def run_all() -> None:
        for _, params, tags, metrics in payload:
            rid = client.create_run(exp).info.run_id
            client.log_batch(rid, metrics=metrics, params=params, tags=tags)
            client.set_terminated(rid, "FINISHED")

    return timed(run_all)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-sweeps", action="store_true", help="only the in-process rows")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    random.seed(0)
    cfgs = grid_configs()
    rows: dict[str, float] = {}
    rows["seeds' loops (d2l 3.2/3.3), training only"] = timed(lambda: each(seeds_loop, cfgs))
    rows["our sequential training, no tracking"] = timed(lambda: each(train_one, cfgs))
    hists: list[History] = [History()] * len(cfgs)
    stacked_cfgs = [c.copy() for c in cfgs]
    for c in stacked_cfgs:
        resolve_engine(c, stacking=True)

    def stacked() -> None:
        for idx in group_by_schedule(stacked_cfgs):
            for i, h in zip(idx, train([stacked_cfgs[i] for i in idx]), strict=True):
                hists[i] = h

    rows["our stacked training, no tracking"] = timed(stacked)
    with tempfile.TemporaryDirectory() as tmp:
        rows["MLflow floor: create + 1 log_batch + terminate"] = mlflow_floor(
            cfgs, hists, Path(tmp) / "floor"
        )
        if not args.skip_sweeps:
            for launcher in ("basic", "joblib", "stacked"):
                rows[f"make sweep SWEEP=bench LAUNCHER={launcher}"] = sweep_seconds(
                    launcher, Path(tmp) / launcher
                )
    seeds = rows["seeds' loops (d2l 3.2/3.3), training only"]
    table = pd.DataFrame({"seconds": rows})
    table["vs seeds' loops"] = seeds / table["seconds"]
    print(
        f"linreg-sweep bench, {time.strftime('%Y-%m-%d')}, {platform.node()}: "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {len(cfgs)} configs x 3 epochs"
    )
    print(table.to_string(float_format=lambda x: f"{x:.3g}"))
    stacked_s = rows["our stacked training, no tracking"]
    floor = rows["MLflow floor: create + 1 log_batch + terminate"]
    print(f"\nstacked training vs seeds' loops: {seeds / stacked_s:.0f}x (target >= 100x)")
    sequential = rows["our sequential training, no tracking"]
    print(f"stacked vs sequential training: {sequential / stacked_s:.1f}x")
    print(f"MLflow floor per run: {floor / len(cfgs) * 1e3:.0f} ms")
    if not args.skip_sweeps:
        e2e = rows["make sweep SWEEP=bench LAUNCHER=stacked"]
        print(
            f"end-to-end stacked sweep / (MLflow floor + stacked training): "
            f"{e2e / (floor + stacked_s):.2f} (target <= 1.5)"
        )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: this process {own:.0f} MiB, largest sweep process {kids:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
