"""What a sweep found, in a few lines: where its report is, how to look at its runs, and each
section's one-sentence answer, read from the report's ``answers.json`` (the report's own
words). The sweep prints it when it builds or finds its report, and so does ``make report``.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mlflow.entities import Run

from pipeline import queries
from pipeline.context import is_server
from pipeline.views import runs_view_url

REPORT = "report/report.html"
ANSWERS = "report/answers.json"


def report_location(uri: str, parent: Run) -> str:
    """Where a browser opens the sweep's report: the file itself for a store whose artifacts
    are local files (SQLite), else the run's artifact page on the tracking server (the server
    sends artifacts as downloads; its UI shows the HTML)."""
    root = urlsplit(parent.info.artifact_uri)
    if root.scheme == "file":
        return str(Path(unquote(root.path)) / REPORT)
    if is_server(uri):
        exp, run = parent.info.experiment_id, parent.info.run_id
        return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run}/artifactPath/{REPORT}"
    return f"{parent.info.artifact_uri.rstrip('/')}/{REPORT}"


def first_sentence(text: str, shortest: int = 40) -> str:
    """The text up to the first '. ' that ends a sentence (the next word starts with a capital
    letter, and the period does not end an abbreviation such as e.g. or vs.), and the next
    sentences too while it is shorter than ``shortest`` characters: "Yes." alone says little."""
    abbreviations = ("e.g.", "i.e.", "vs.", "cf.", "etc.", "approx.", "resp.")
    start = 0
    while True:
        at = text.find(". ", start)
        if at < 0:
            return text.strip()
        head, rest = text[: at + 1], text[at + 2 :].lstrip()
        ends = rest[:1].isupper() and not head.lower().endswith(abbreviations)
        if ends and len(head.strip()) >= shortest:
            return head.strip()
        start = at + 2


def digest_lines(answers: dict) -> list[str]:
    """One line per section of answers.json's ``digest``: its title and one-sentence answer."""
    return [f"  - {d['title']}: {d['answer']}" for d in answers.get("digest", [])]


def findings(uri: str, parent: Run, ui_port: int = 5000) -> list[str]:
    """The lines a sweep ends with: the report, the runs view and the digest."""
    run_id = parent.info.run_id
    lines = [f"report: {report_location(uri, parent)}"]
    if is_server(uri):
        view = runs_view_url(uri, parent.info.experiment_id, run_id)
        lines.append(f"runs: {view}")
    else:
        lines.append(
            f"runs: `make ui` serves the store at http://127.0.0.1:{ui_port} and prints this "
            "sweep's views (every run, and by cell with the seeds averaged)"
        )
    if ANSWERS not in queries.artifact_names(uri, run_id, "report"):
        return lines  # no report built yet
    digest = digest_lines(json.loads(queries.artifact_text(uri, run_id, ANSWERS)))
    if digest:
        lines += ["what it found (report/answers.json):", *digest]
    return lines


def print_findings(uri: str, parent: Run) -> None:
    print("\n".join(findings(uri, parent)), flush=True)
