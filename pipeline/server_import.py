"""``python -m pipeline.server_import --from sqlite:///mlruns/mlflow.db --to http://...``:
copy a store (the project's SQLite file) into the team server. ``make server-import``.

MLflow has no tool for this (``mlflow db`` upgrades a schema in place; ``migrate-filestore``
reads the old file store only), so the copy goes through the MLflow API: every active
experiment with its tags, every run with its name, start and end time, status, params, tags,
the full history of every metric, and its artifacts. The server gives each run a new id: the
copy carries ``imported_from=<old id>``, and ``mlflow.parentRunId`` points to the new parent,
so sweeps stay nested. Running it again copies only the runs not copied yet.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import TypeVar

import mlflow
from mlflow.entities import Metric, Param, Run, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline.context import is_server
from pipeline.server import TrackingUnreachable, check_tracking_reachable
from pipeline.store import get_client
from pipeline.views import SHARED_VIEW_PREFIX, save_runs_view

IMPORTED_FROM = "imported_from"
T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def all_runs(client: mlflow.MlflowClient, experiment_id: str, query: str = "") -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def copy_run(
    src: mlflow.MlflowClient, dst: mlflow.MlflowClient, run: Run, exp_id: str, new_ids: dict
) -> str:
    old = run.info.run_id
    tags = {**run.data.tags, IMPORTED_FROM: old}
    parent = tags.get(MLFLOW_PARENT_RUN_ID)
    if parent in new_ids:
        tags[MLFLOW_PARENT_RUN_ID] = new_ids[parent]
    new = dst.create_run(
        exp_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name
    ).info.run_id
    metrics = [m for key in run.data.metrics for m in src.get_metric_history(old, key)]
    params = [Param(k, v) for k, v in run.data.params.items()]
    # MLflow's log_batch limits: 1000 metrics, 100 params per call
    for part in chunks(metrics, 1000):
        dst.log_batch(new, metrics=[Metric(m.key, m.value, m.timestamp, m.step) for m in part])
    for part_p in chunks(params, 100):
        dst.log_batch(new, params=part_p)
    with tempfile.TemporaryDirectory() as tmp:
        if src.list_artifacts(old):
            dst.log_artifacts(new, src.download_artifacts(old, "", tmp))
    dst.set_terminated(new, run.info.status, end_time=run.info.end_time)
    return new


def copy_store(src_uri: str, dst_uri: str) -> tuple[int, int]:
    """Copy every active experiment and run of ``src_uri`` into ``dst_uri``;
    returns (runs copied, runs already there)."""
    src, dst = get_client(src_uri), get_client(dst_uri)
    copied = skipped = 0
    for exp in src.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        target = dst.get_experiment_by_name(exp.name)
        exp_id = target.experiment_id if target else dst.create_experiment(exp.name)
        for key, value in exp.tags.items():
            if not key.startswith(SHARED_VIEW_PREFIX):  # they name old run ids: made anew
                dst.set_experiment_tag(exp_id, key, value)
        new_ids = {
            r.data.tags[IMPORTED_FROM]: r.info.run_id
            for r in all_runs(dst, exp_id, f"tags.{IMPORTED_FROM} LIKE '%'")
        }
        # parents before their children, so that every parent link can be rewritten
        runs = sorted(
            all_runs(src, exp.experiment_id),
            key=lambda r: (MLFLOW_PARENT_RUN_ID in r.data.tags, r.info.start_time),
        )
        for run in runs:
            if run.info.run_id in new_ids:
                skipped += 1
                continue
            new_ids[run.info.run_id] = copy_run(src, dst, run, exp_id, new_ids)
            copied += 1
            if run.data.tags.get("sweep_parent") == "true":
                save_runs_view(dst, exp_id, new_ids[run.info.run_id])
    return copied, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from", dest="src", required=True, help="source tracking URI")
    parser.add_argument("--to", dest="dst", required=True, help="the server's URI")
    args = parser.parse_args(argv)
    if not is_server(args.dst):
        print(f"error: --to {args.dst}: expected the server's http URI", file=sys.stderr)
        return 2
    try:
        check_tracking_reachable(args.dst)
    except TrackingUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    copied, skipped = copy_store(args.src, args.dst)
    print(f"copied {copied} runs from {args.src} to {args.dst} ({skipped} were already there)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
