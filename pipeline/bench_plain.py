"""The plain Hydra + MLflow app that ``make bench`` measures the pipeline against.

What one writes from the Hydra and MLflow tutorials: a dataclass config in Hydra's
ConfigStore, one ``@hydra.main`` job per config (Hydra's basic sweeper and launcher), the
seeds' own training loop (:mod:`pipeline.seeds_loops`), and MLflow's fluent API:
``mlflow.start_run``, the config as params, ``mlflow.log_metrics`` after every epoch. It logs
the same metric points as a pipeline run with ``train.log_every`` past the last update (the
same keys at the same steps, non-finite values skipped), so the bench compares equal
payloads::

    python -m pipeline.bench_plain -m model=linear,scratch loss=mse_mean,mse_sum,huber \\
        lr=0.003,0.01,0.03,0.1,0.3 batch_size=1,10,100,1000   # the grid G of make bench

It is not a Hydra plugin and shares nothing with the pipeline's app but the seeds' loops.
"""

from __future__ import annotations

import math
import random
import resource
import time
from dataclasses import dataclass

import hydra
import mlflow
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from pipeline.seeds_loops import seeds_train


@dataclass
class PlainConfig:
    model: str = "linear"  # linear (d2l 3.3) or scratch (d2l 3.2)
    loss: str = "mse_mean"  # mse_mean, mse_sum or huber (mean, delta 1)
    lr: float = 0.03
    batch_size: int = 10
    epochs: int = 3
    n: int = 1000
    n_val: int = 1000  # held-out examples of the same law
    seed: int = 0
    experiment: str = "plain"


ConfigStore.instance().store(name="plain", node=PlainConfig)

LOSSES = {"mse_mean": ("mse", "mean"), "mse_sum": ("mse", "sum"), "huber": ("huber", "mean")}


def finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@hydra.main(version_base="1.3", config_path=None, config_name="plain")
def main(cfg: DictConfig) -> float:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    loss, reduction = LOSSES[cfg.loss]
    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run():
        mlflow.log_params({str(k): v for k, v in cfg.items()})
        start, t0 = rss_mb(), time.perf_counter()
        result = seeds_train(
            cfg.model, loss, reduction, cfg.lr, cfg.batch_size, cfg.epochs, cfg.n, cfg.n_val
        )
        seconds = time.perf_counter() - t0
        for epoch, numbers in enumerate(result.epochs):
            mlflow.log_metrics(finite(numbers), step=epoch)
        final = {
            **{f"w_hat_{i}": w for i, w in enumerate(result.w_hat)},
            "b_hat": result.b_hat,
            "updates": float(cfg.epochs * math.ceil(cfg.n / cfg.batch_size)),
            **result.ols,  # the least-squares floor of the same data
            "data_mb": result.data_mb,
            "train_time_s": seconds,
            "peak_rss_mb": rss_mb(),
            "rss_start_mb": start,
            # the config's numbers as metrics too, so the UI sorts them as numbers
            "lr": cfg.lr,
            "batch_size": float(cfg.batch_size),
            "seed": float(cfg.seed),
            "n": float(cfg.n),
            "epochs": float(cfg.epochs),
            "delta": 1.0,
            "noise": 0.01,
            "outlier_fraction": 0.0,
            "weight_decay": 0.0,
        }
        mlflow.log_metrics(finite(final))
    return result.epochs[-1]["mse"]


if __name__ == "__main__":
    main()
