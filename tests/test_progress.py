"""The sweep's progress view: one bar redrawn in place on a terminal, at most about 20 lines
otherwise, counting each job's outcome wherever the job ran."""

from __future__ import annotations

import io
import math
import os
import pty
import time
from pathlib import Path

from pipeline.context import SweepContext
from pipeline.progress import LINES, ProgressView, outcome_of, record

OUTCOMES = ["finished", "finished", "diverged", "failed"]  # repeated over the jobs


def run_view(tmp_path: Path, total: int, stream: io.TextIOBase | object) -> None:
    """``total`` jobs ending one at a time while the view shows them (as its thread would)."""
    tmp_path.mkdir(parents=True, exist_ok=True)  # the sweep dir, as the sweeper makes it
    context = SweepContext("parent", total, time.time(), "")
    view = ProgressView(tmp_path, context, "demo", cached=7, stream=stream)  # type: ignore[arg-type]
    with view:
        for i in range(total):
            record(tmp_path, context, [OUTCOMES[i % len(OUTCOMES)]])
            view.show()


def test_without_a_terminal_a_sweep_prints_at_most_about_twenty_lines(tmp_path: Path) -> None:
    for total in (3, 20, 997):
        out = io.StringIO()
        run_view(tmp_path / str(total), total, out)
        lines = out.getvalue().splitlines()
        assert 1 <= len(lines) <= LINES + 1 and len(lines) <= total + 1, lines
        assert lines[-1].startswith(f"[demo] {total}/{total} jobs (100%), ")
        done = [int(ln.split()[1].split("/")[0]) for ln in lines]
        assert done == sorted(set(done))  # counts up, never the same line twice
        n = {k: sum(OUTCOMES[i % 4] == k for i in range(total)) for k in set(OUTCOMES)}
        assert (
            f"finished {n['finished']}, diverged {n['diverged']}, failed {n['failed']}, "
            "cached 7 | elapsed" in lines[-1]
        )


def test_on_a_terminal_one_bar_redraws_in_place(tmp_path: Path) -> None:
    main, child = pty.openpty()
    os.set_blocking(main, False)
    with os.fdopen(child, "w") as terminal:
        run_view(tmp_path, 50, terminal)
    chunks = []
    while True:
        try:
            chunks.append(os.read(main, 65536))
        except (BlockingIOError, OSError):
            break
    os.close(main)
    text = b"".join(chunks).decode()
    assert text.count("\r") >= 50  # redrawn for each job, at the start of the same line
    assert text.rstrip("\r\n").count("\n") == 0  # one line: nothing scrolls
    last = text.rstrip("\r\n").rsplit("\r", 1)[-1]
    assert "demo: 100%" in last and "50/50" in last
    n = {k: sum(OUTCOMES[i % 4] == k for i in range(50)) for k in set(OUTCOMES)}
    assert (
        f"finished {n['finished']}, diverged {n['diverged']}, failed {n['failed']}, cached 7"
        in last
    )


def test_a_job_whose_sweep_dir_is_elsewhere_is_not_counted(tmp_path: Path) -> None:
    """A Ray worker on another node runs the job callback where the sweep dir does not exist:
    nothing is written there, and the job is not failed for it."""
    context = SweepContext("parent", 1, time.time(), "")
    record(tmp_path / "on-another-node", context, ["finished"])
    assert not (tmp_path / "on-another-node").exists()


def test_a_job_outcome_is_its_return() -> None:
    assert outcome_of(True, 0.1) == "finished"
    assert outcome_of(True, math.inf) == "diverged"
    assert outcome_of(False, RuntimeError("x")) == "failed"
