"""One job: validate the config, train, and log the run. The Hydra app and the sweep
launchers all come through :func:`run_job`."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

import torch
from omegaconf import DictConfig

from pipeline.config import register_configs, validate
from pipeline.tracking import RunLogger
from pipeline.train import History, train

log = logging.getLogger("pipeline")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, CI timeouts) ends the run KILLED like Ctrl-C instead of leaving it RUNNING."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_epoch(epoch: int, m: dict[str, float]) -> None:
    loss = m["train_loss"]
    shown = f"{loss:f}" if abs(loss) < 1e4 else f"{loss:.3e}"  # d2l prints {:f}
    log.info(
        f"epoch {epoch}, loss {shown}, mse {m['mse']:.3g}, "
        f"w error {m['w_error']:.3g}, b error {m['b_error']:.3g}"
    )


def run_job(
    cfg: DictConfig, overrides: list[str] | None = None, tags: dict[str, str] | None = None
) -> float:
    """Train ``cfg`` and log it as one MLflow run; returns the final full-data MSE (inf when
    the run diverged). Raises ConfigError, before any run exists, for a bad config."""
    register_configs()  # resolvers, for jobs unpickled in a launcher's worker process
    validate(cfg)
    torch.use_deterministic_algorithms(True)  # CPU kernels here are; make it a guarantee
    logger = RunLogger(cfg, overrides, tags)
    run_id = logger.start()
    in_sweep = cfg.sweep.total > 0  # a sweep prints one progress line per job instead
    if not in_sweep:
        log.info(f"mlflow run {run_id} ({logger.uri})")
    with sigterm_as_interrupt():
        try:
            hist = train(cfg, on_epoch=None if in_sweep else print_epoch)
            logger.finish(hist)
        except BaseException as exc:
            logger.fail(exc)
            raise
    if hist.diverged:
        log.warning(
            f"WARNING: diverged at update {hist.diverged_at_step} "
            f"(optim.lr={cfg.optim.lr}); run {run_id} is tagged diverged=true"
        )
    return hist.final_mse


def log_trained(cfg: DictConfig, hist: History, overrides: list[str] | None = None) -> float:
    """Log a config that was trained elsewhere (the stacked launcher) as one run, with the
    same contract as :func:`run_job`; returns what run_job would."""
    validate(cfg)
    torch.use_deterministic_algorithms(True)  # as run_job: the run's tags record it
    logger = RunLogger(cfg, overrides)
    logger.start()
    try:
        logger.finish(hist)
    except BaseException as exc:
        logger.fail(exc)
        raise
    return hist.final_mse
