"""``python -m pipeline [overrides]``: the Hydra app (configs in conf/)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.config import PROJECT_ROOT, ConfigError, register_configs
from pipeline.job import run_job
from pipeline.server import TrackingUnreachable, check_tracking_reachable
from pipeline.tracking import tracking_uri

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
        return run_job(cfg, overrides=list(HydraConfig.get().overrides.task))
    except ConfigError as exc:
        # One line, no traceback, and no MLflow run was created.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
