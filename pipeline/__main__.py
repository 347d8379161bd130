"""``python -m pipeline [overrides]``: the Hydra app (configs in conf/).

Every bad input ends in one ``error:`` line and exit code 2, with no traceback: the job's own
checks (:class:`ConfigError`), Hydra's type and choice errors at composition
(``loss.reduction=avg``, ``model=foo``, ``optim.lr=abc``) and a tracking store that cannot be
used (:class:`StoreError`). ``HYDRA_FULL_ERROR=1`` shows the full trace instead. SIGTERM and
Ctrl-C close the open runs KILLED and exit 130 (SIGINT) or 143 (SIGTERM).

Light at import: ``--help``, ``--cfg job`` and a bad input never import torch or MLflow (about
2 s); a job imports them once its config is valid.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import PROJECT_ROOT, ConfigError, register_configs, validate
from pipeline.context import StoreError, tracking_uri
from pipeline.procs import Interrupted
from pipeline.server import TrackingUnreachable, check_tracking_reachable

register_configs()


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        check_tracking_reachable(tracking_uri(cfg))
    except TrackingUnreachable as exc:
        # One line naming the URI, in seconds (MLflow alone retries for minutes).
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        validate(cfg)  # before the imports of torch and MLflow: a bad input costs nothing
        from pipeline.job import run_job

        return run_job(cfg, overrides=list(HydraConfig.get().overrides.task))
    except (ConfigError, StoreError) as exc:
        # One line, no traceback, and no MLflow run was created.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(exc: BaseException) -> str:
    """Hydra's multi-line composition errors as one line: what failed, why, and the allowed
    options when Hydra lists them."""
    parts: list[str] = []
    for e in (exc, exc.__cause__):
        if e is not None:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            if lines and lines[0] not in parts:
                parts.append(lines[0])
    text = str(exc)
    options = re.search(r"Available options in '([^']*)':\n((?:\t.*\n?)+)", text)
    if options:
        parts.append(f"available: {', '.join(o.strip() for o in options[2].splitlines())}")
    return ": ".join(parts) or type(exc).__name__


def cli() -> None:
    """The app, with Hydra's own errors reported as one line. Hydra prints them itself unless
    ``HYDRA_FULL_ERROR=1``, which makes it raise them: we set it, and print them here."""
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException, StoreError) as exc:
        if full:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:
        if full:
            raise
        print("interrupted: the open runs were closed KILLED", file=sys.stderr)
        raise SystemExit(143 if isinstance(exc, Interrupted) else 130) from None
    except Exception:
        if full:
            raise
        traceback.print_exc()  # a bug, not a bad input: the trace is what helps
        raise SystemExit(1) from None


def collect_less_often() -> None:
    """A sweep allocates millions of short-lived objects (configs, MLflow entities) beside the
    ~3000 modules of torch and MLflow. With Python's default thresholds (a collection every 700
    allocations) the collector walks that heap again and again: 1-1.5 s of a 9 s sweep here.
    Every 50000 allocations: the same peak memory (measured), a fraction of the time."""
    gc.set_threshold(50_000, 20, 10)


def exit_quickly() -> None:
    """Before the interpreter exits: its last garbage collections walk the whole heap (1-2 s).
    Every run is closed and committed by now, so freeze the heap instead: objects are still
    freed by reference counting, and what only a collection would free goes back to the OS
    with the process."""
    gc.freeze()


if __name__ == "__main__":  # the command line only: the settings are for a process that ends
    collect_less_often()
    try:
        cli()
    finally:
        exit_quickly()
