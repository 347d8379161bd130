"""``python -m pipeline.rerun <run_id>`` or ``--sweep <parent_run_id>``: reproduce logged runs.

The job is rebuilt from the run's own ``config.yaml`` artifact, not from today's ``conf/``,
run again and logged as a new run tagged ``rerun_of=<id>``; then every metric history is
compared with the original's. Prints ``identical`` or a table of the differences and exits 1
on any mismatch; warns when the code or package versions differ from the original's.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import yaml
from mlflow.entities import Run
from omegaconf import DictConfig, open_dict

from pipeline import queries
from pipeline.config import register_configs
from pipeline.context import StoreError, tracking_uri
from pipeline.identity import config_hash
from pipeline.job import prepare, run_group, run_job
from pipeline.steps import TIMED_PROBES
from pipeline.tracking import MACHINE_METRICS, VERSION_TAGS, version_tags


class RerunError(Exception):
    """A run that cannot be rerun; the message is one line and nothing was written."""


def get_run(uri: str, run_id: str) -> Run:
    run = queries.get_run(uri, run_id)
    if run is None:
        raise RerunError(f"no run {run_id!r} in {uri}")
    return run


def original_config(uri: str, run: Run) -> tuple[DictConfig, list[str]]:
    """The logged config of ``run``, pointed at today's store."""
    rid = run.info.run_id
    if "config_hash" not in run.data.tags:
        raise RerunError(f"run {rid} was not made by this pipeline (it has no config_hash tag)")
    files = queries.artifact_names(uri, rid)
    if "config.yaml" not in files:
        raise RerunError(f"run {rid} has no config.yaml artifact to rebuild it from")
    cfg = queries.load_run_config(uri, rid)
    if config_hash(cfg) != run.data.tags["config_hash"]:
        raise RerunError(f"run {rid}: its config.yaml does not match its config_hash tag")
    overrides: list[str] = []
    if "overrides.yaml" in files:
        overrides = list(yaml.safe_load(queries.artifact_text(uri, rid, "overrides.yaml")) or [])
    with open_dict(cfg):
        cfg.tracking.uri = None  # today's store ($MLFLOW_TRACKING_URI or mlruns/)
        cfg.tracking.run_name = f"rerun-{run.info.run_name}"
    return cfg, overrides


def histories(uri: str, run: Run) -> dict[str, list[tuple[int, float]]]:
    return {key: queries.metric_history(uri, run.info.run_id, key) for key in run.data.metrics}


# metrics that measure the machine, not the computation: never compared
TIMINGS = MACHINE_METRICS | set(TIMED_PROBES)


def compare(uri: str, original: Run, rerun: Run) -> pd.DataFrame:
    """One row per (metric, step) whose value differs or exists in only one of the runs."""
    a, b = histories(uri, original), histories(uri, rerun)
    rows = []
    for key in sorted((set(a) | set(b)) - TIMINGS):
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


def stacked_group(uri: str, run: Run) -> list[Run]:
    """The runs that a stacked run was trained with, in their order (one computation: they
    share a ``stack_id`` tag). Reruns are not part of it."""
    stack_id = run.data.tags.get("stack_id")
    if not stack_id or run.data.tags.get("stack_size", "1") == "1":
        return [run]
    group = queries.search_all(
        uri,
        run.info.experiment_id,
        f"tags.stack_id = '{stack_id}'",
        order_by=["attributes.start_time ASC"],
    )
    group = [r for r in group if "rerun_of" not in r.data.tags]
    if len(group) != int(run.data.tags["stack_size"]):
        raise RerunError(f"run {run.info.run_id}: its stacked group is no longer complete")
    return group


def rerun(uri: str, run_id: str) -> tuple[Run, pd.DataFrame]:
    """Rerun one logged run with its logged engine; returns the new run and its differences
    from the original. A stacked run is retrained inside its whole stacked group (the same
    computation, so the same bits); only its own new run is logged."""
    original = get_run(uri, run_id)
    cfg, overrides = original_config(uri, original)
    for warning in version_warnings(original):
        print(f"warning: {warning}", file=sys.stderr)
    tags = {"rerun_of": run_id}
    if original.data.tags.get("engine") == "stacked":
        group = stacked_group(uri, original)
        cfgs = [cfg if r.info.run_id == run_id else original_config(uri, r)[0] for r in group]
        for c in cfgs:
            prepare(c, stacking=True)
        me = [r.info.run_id for r in group].index(run_id)
        trained = run_group(cfgs, [overrides] * len(cfgs), None, tags, only=me)
        if trained[0].status.name == "FAILED":
            raise RerunError(f"run {run_id}: retraining failed: {trained[0]._return_value!r}")
    else:
        run_job(cfg, overrides, tags=tags)
    exp_id = original.info.experiment_id
    (new,) = queries.search_all(
        uri, exp_id, f"tags.rerun_of = '{run_id}'", order_by=["attributes.start_time DESC"]
    )[:1]
    return new, compare(uri, original, new)


def sweep_children(uri: str, parent_id: str) -> list[Run]:
    """The children of a sweep's parent run ("latest": the newest sweep)."""
    try:
        parent = queries.find_sweep(uri, parent_id)
    except queries.SweepNotFound as exc:
        raise RerunError(str(exc)) from None
    return queries.children(uri, parent)


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
    uri = tracking_uri()
    try:
        if args.run_id:
            new, diffs = rerun(uri, args.run_id)
            print(f"rerun {new.info.run_id} of {args.run_id}")
            if diffs.empty:
                print("identical")
                return 0
            print(diffs.to_string(index=False))
            return 1
        children = sweep_children(uri, args.sweep)
        # check them all before writing anything
        for child in children:
            original_config(uri, child)
        mismatched = 0
        for child in children:
            new, diffs = rerun(uri, child.info.run_id)
            verdict = (
                "identical"
                if diffs.empty
                else (f"{len(diffs)} differences, max |Δ| {diffs['abs_diff'].max():.3g}")
            )
            mismatched += not diffs.empty
            print(f"{child.info.run_id} {child.info.run_name} -> {new.info.run_id}: {verdict}")
        print(f"{len(children) - mismatched}/{len(children)} runs identical")
        return 1 if mismatched else 0
    except (RerunError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
