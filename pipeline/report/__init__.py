"""``python -m pipeline.report [--sweep latest|<parent run id>] [--out DIR]``: the FAQ report.

Reads a sweep's runs back from MLflow (:mod:`pipeline.queries`) and writes one section per
question (one module each in ``pipeline/report/sections/``): the question, a table, a plot
and a short answer whose every number is computed from the runs. Sections select runs by
their params, never by preset names, so runs from any sweep that match count. The markdown,
an HTML page, the PNGs and ``answers.json`` are logged to the sweep's parent run under
``report/``; it prints where the report is and each section's one-sentence answer
(:mod:`pipeline.digest`), or with ``--markdown`` the whole report first.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from pipeline import queries
from pipeline.config import register_configs
from pipeline.context import StoreError, tracking_uri
from pipeline.digest import first_sentence, print_findings
from pipeline.outcome import OUTCOMES
from pipeline.report.data import MissingRuns, Section, SweepData
from pipeline.report.render import to_html, to_markdown
from pipeline.report.sections import (
    batch_size,
    book,
    catalogue,
    data_size,
    fitting,
    gradients,
    huber,
    init,
    lr,
    newton,
    no_grad,
    optimizers,
    partial_batch,
    per_sample,
    reduction,
    streaming,
)
from pipeline.store import get_client

# in the order the report shows them; each module has SPEC (key, title, question, preset) and
# build(data, section, out_dir)
SECTIONS: list[ModuleType] = [
    lr,
    batch_size,
    gradients,
    no_grad,
    reduction,
    per_sample,
    huber,
    init,
    data_size,
    newton,
    partial_batch,
    catalogue,
    book,
    optimizers,
    fitting,
    streaming,
]


class ReportError(Exception):
    """The report cannot be built; the message is one line."""


def find_parent(uri: str, sweep: str) -> queries.Run:
    try:
        return queries.find_sweep(uri, sweep)
    except queries.SweepNotFound as exc:
        raise ReportError(str(exc)) from None


def outcome_table(data: SweepData, s: Section) -> pd.DataFrame | None:
    """The section's runs (its evidence, ``run_ids``) counted by outcome, one row; runs
    from outside the sweep (``SweepData.beyond``) are not in it."""
    if data.df.empty or not s.run_ids:
        return None
    used = data.df[data.df["run_id"].isin(s.run_ids)]
    if used.empty:
        return None
    counts = used["outcome"].value_counts()
    s.outcomes = {o: int(counts.get(o, 0)) for o in OUTCOMES}
    return pd.DataFrame([{"runs": len(used), **s.outcomes}])


def build_sections(data: SweepData, folder: Path) -> list[Section]:
    sections = []
    for module in SECTIONS:
        s = Section(*module.SPEC)
        build: Callable[[SweepData, Section, Path], None] = module.build
        try:
            build(data, s, folder)
        except MissingRuns:
            s.missing = True
        if not s.missing and (table := outcome_table(data, s)) is not None:
            s.tables.append((OUTCOME_CAPTION, table))
        sections.append(s)
    return sections


OUTCOME_CAPTION = (
    "The section's runs by outcome (tag `outcome`, decided when training ended): means are "
    "over converged runs unless the section says otherwise"
)


def answers_of(sections: list[Section]) -> dict[str, Any]:
    """The machine-readable answers: each section's numbers under its key, and the child runs
    each section used under "runs" (non-finite numbers become null: JSON has no inf/nan)."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, float | np.floating):
            return float(x) if math.isfinite(x) else None
        if isinstance(x, np.integer | np.bool_):
            return x.item()
        return x

    out: dict[str, Any] = {s.key: clean(s.answers) for s in sections if not s.missing}
    out["runs"] = {s.key: s.run_ids for s in sections if not s.missing}
    out["outcomes"] = {s.key: s.outcomes for s in sections if not s.missing and s.outcomes}
    # each answer's first sentence, in the report's words: what a finished sweep prints
    out["digest"] = [
        {"key": s.key, "title": s.title, "answer": first_sentence(s.answer)}
        for s in sections
        if not s.missing and s.answer
    ]
    return out


def build_report(
    sweep: str = "latest", out: Path | None = None, uri: str | None = None
) -> tuple[str, list[Section]]:
    """Write the report for a sweep into ``out`` and log it to the sweep's parent run (in the
    store ``uri``, by default $MLFLOW_TRACKING_URI or the project's)."""
    register_configs()
    uri = uri or tracking_uri()
    parent = find_parent(uri, sweep)
    data = SweepData(uri, parent)
    with tempfile.TemporaryDirectory() as tmp:
        folder = out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sections = build_sections(data, folder)
        markdown = to_markdown(parent, sections)
        (folder / "report.md").write_text(markdown)
        (folder / "answers.json").write_text(json.dumps(answers_of(sections), indent=1))
        (folder / "report.html").write_text(to_html(parent, sections))
        get_client(uri).log_artifacts(parent.info.run_id, str(folder), "report")
    return markdown, sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", default="latest", help="latest or a sweep's parent run id")
    parser.add_argument("--out", type=Path, default=None, help="also keep the files here")
    parser.add_argument(
        "--markdown", action="store_true", help="print the whole report, not just its digest"
    )
    args = parser.parse_args(argv)
    uri = tracking_uri()
    try:
        parent = find_parent(uri, args.sweep)  # "latest" settled once, before any work
        markdown, _ = build_report(parent.info.run_id, args.out, uri=uri)
    except (ReportError, StoreError) as exc:
        print(f"error: {exc}")
        return 2
    if args.markdown:
        print(markdown)
    print_findings(uri, parent)
    return 0
