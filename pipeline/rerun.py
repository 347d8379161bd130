"""``python -m pipeline.rerun <run_id>`` or ``--sweep <parent_run_id>``: reproduce logged runs.

The job is rebuilt from the run's own ``config.yaml`` artifact, not from today's ``conf/``,
run again and logged as a new run tagged ``rerun_of=<id>``; then every metric history is
compared with the original's. Prints ``identical`` or a table of the differences and exits 1
on any mismatch; warns when the code or package versions differ from the original's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, open_dict

from pipeline.config import register_configs
from pipeline.job import run_job
from pipeline.tracking import (
    VERSION_TAGS,
    config_hash,
    latest_sweep,
    load_run_config,
    tracking_uri,
    version_tags,
)


class RerunError(Exception):
    """A run that cannot be rerun; the message is one line and nothing was written."""


def get_run(client: mlflow.MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise RerunError(f"no run {run_id!r} in {client.tracking_uri}") from None


def original_config(client: mlflow.MlflowClient, run: Run) -> tuple[DictConfig, list[str]]:
    """The logged config of ``run``, pointed at today's store and detached from its sweep."""
    rid = run.info.run_id
    if "config_hash" not in run.data.tags:
        raise RerunError(f"run {rid} was not made by this pipeline (it has no config_hash tag)")
    files = {a.path for a in client.list_artifacts(rid)}
    if "config.yaml" not in files:
        raise RerunError(f"run {rid} has no config.yaml artifact to rebuild it from")
    cfg = load_run_config(client, rid)
    if config_hash(cfg) != run.data.tags["config_hash"]:
        raise RerunError(f"run {rid}: its config.yaml does not match its config_hash tag")
    overrides: list[str] = []
    if "overrides.yaml" in files:
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(rid, "overrides.yaml", tmp)).read_text()
        overrides = list(yaml.safe_load(text) or [])
    with open_dict(cfg):
        cfg.tracking.uri = None  # today's store ($MLFLOW_TRACKING_URI or mlruns/)
        cfg.tracking.parent_run_id = None
        cfg.tracking.run_name = f"rerun-{run.info.run_name}"
        cfg.sweep.total, cfg.sweep.started = 0, 0.0
    return cfg, overrides


def histories(client: mlflow.MlflowClient, run: Run) -> dict[str, list[tuple[int, float]]]:
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def compare(client: mlflow.MlflowClient, original: Run, rerun: Run) -> pd.DataFrame:
    """One row per (metric, step) whose value differs or exists in only one of the runs."""
    a, b = histories(client, original), histories(client, rerun)
    rows = []
    for key in sorted(set(a) | set(b)):
        da, db = dict(a.get(key, [])), dict(b.get(key, []))
        for step in sorted(set(da) | set(db)):
            va, vb = da.get(step), db.get(step)
            if va != vb:
                delta = abs(va - vb) if va is not None and vb is not None else float("nan")
                rows.append(
                    {"metric": key, "step": step, "original": va, "rerun": vb, "abs_diff": delta}
                )
    return pd.DataFrame(rows, columns=["metric", "step", "original", "rerun", "abs_diff"])


def version_warnings(original: Run) -> list[str]:
    now = version_tags()
    return [
        f"{k}: original {original.data.tags.get(k, '?')}, now {now[k]}"
        for k in VERSION_TAGS
        if original.data.tags.get(k) != now[k]
    ]


def rerun(client: mlflow.MlflowClient, run_id: str) -> tuple[Run, pd.DataFrame]:
    """Rerun one logged run; returns the new run and its differences from the original."""
    original = get_run(client, run_id)
    cfg, overrides = original_config(client, original)
    for warning in version_warnings(original):
        print(f"warning: {warning}", file=sys.stderr)
    run_job(cfg, overrides, tags={"rerun_of": run_id})
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    assert exp is not None  # run_job just logged into it
    new = client.search_runs(
        [exp.experiment_id],
        f"tags.rerun_of = '{run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return new[0], compare(client, original, new[0])


def sweep_children(client: mlflow.MlflowClient, parent_id: str) -> list[Run]:
    """The children of a sweep's parent run ("latest": the newest sweep)."""
    if parent_id == "latest":
        latest = latest_sweep(client)
        if latest is None:
            raise RerunError("no sweep in the store yet: run `make sweep` first")
        parent_id = latest.info.run_id
    parent = get_run(client, parent_id)
    if parent.data.tags.get("sweep_parent") != "true":
        raise RerunError(f"run {parent_id} is not a sweep's parent run")
    return client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("run_id", nargs="?", help="the run to reproduce")
    group.add_argument(
        "--sweep",
        metavar="PARENT_RUN_ID",
        help="rerun every child of a sweep (latest: the newest sweep)",
    )
    args = parser.parse_args(argv)
    register_configs()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    try:
        if args.run_id:
            new, diffs = rerun(client, args.run_id)
            print(f"rerun {new.info.run_id} of {args.run_id}")
            if diffs.empty:
                print("identical")
                return 0
            print(diffs.to_string(index=False))
            return 1
        children = sweep_children(client, args.sweep)
        # check them all before writing anything
        for child in children:
            original_config(client, child)
        mismatched = 0
        for child in children:
            new, diffs = rerun(client, child.info.run_id)
            verdict = (
                "identical"
                if diffs.empty
                else (f"{len(diffs)} differences, max |Δ| {diffs['abs_diff'].max():.3g}")
            )
            mismatched += not diffs.empty
            print(f"{child.info.run_id} {child.info.run_name} -> {new.info.run_id}: {verdict}")
        print(f"{len(children) - mismatched}/{len(children)} runs identical")
        return 1 if mismatched else 0
    except RerunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
