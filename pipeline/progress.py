"""A sweep's progress: what every process that finishes jobs counts, and what the sweep shows.

Jobs end in whichever process runs them (the sweep's own for the stacked and basic launchers,
joblib's workers, Ray's driver or workers), so each adds its outcomes to one counter file in
the sweep dir, under a lock (:func:`record`). The sweep's main process alone shows them
(:class:`ProgressView`): on a terminal one tqdm bar redrawn in place (jobs done/total, ETA,
finished/diverged/failed, cached); otherwise (CI, a log file) a line each twentieth of the
jobs, so no sweep prints more than about 20. Light at import: tqdm loads when a view starts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pipeline.context import SweepContext
from pipeline.procs import file_lock

OUTCOMES = ("finished", "diverged", "failed")
LINES = 20  # without a terminal: at most this many progress lines (and the last one)
POLL_S = 0.5  # how often the view reads the counter while jobs run elsewhere


def terminal_size(stream: IO[str]) -> os.terminal_size:
    """The stream's own terminal size ((0, 0) when it reports none)."""
    try:
        return os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return os.terminal_size((0, 0))


def counter_path(sweep_dir: str | Path, context: SweepContext) -> Path:
    return Path(sweep_dir) / f".progress-{context.started}"


def _read(path: Path) -> dict[str, int]:
    try:
        counts = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        counts = {}
    return {k: int(counts.get(k, 0)) for k in OUTCOMES}


def record(sweep_dir: str | Path, context: SweepContext, outcomes: list[str]) -> None:
    """Add the outcomes (``finished``, ``diverged`` or ``failed``) of jobs that just ended."""
    path = counter_path(sweep_dir, context)
    if not path.parent.is_dir():  # a job on another node of a cluster: the view cannot count it
        return
    with file_lock(path.with_suffix(".lock")):
        counts = _read(path)
        for outcome in outcomes:
            counts[outcome] += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts))
        tmp.replace(path)  # a reader without the lock never sees half a file


def outcome_of(ok: bool, value: Any) -> str:
    """A job's outcome from what it returned: its final mse (inf when it diverged)."""
    if not ok:
        return "failed"
    return "diverged" if isinstance(value, float) and not math.isfinite(value) else "finished"


class ProgressView:
    """The sweep's progress while its launcher runs, as a context manager in the sweep's main
    process: a thread reads the counter every ``POLL_S`` and shows it."""

    def __init__(
        self,
        sweep_dir: str | Path,
        context: SweepContext,
        name: str,
        cached: int,
        stream: IO[str] | None = None,
    ):
        self.path = counter_path(sweep_dir, context)
        self.context, self.name, self.cached = context, name, cached
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._open = contextlib.ExitStack()  # the bar and the log redirection, on a terminal
        self._shown = 0  # jobs done at the last line (no terminal)

    def __enter__(self) -> ProgressView:
        if self.terminal:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # a terminal that reports no size (`script`, some CI consoles) would make tqdm
            # draw nothing: then the usual fallback, 80 x 24
            sized = min(terminal_size(self.stream)) > 0
            self._bar = self._open.enter_context(
                tqdm(
                    total=self.context.total,
                    desc=self.name,
                    unit="job",
                    file=self.stream,
                    dynamic_ncols=sized,
                    ncols=None if sized else 80,
                    nrows=None if sized else 24,
                    smoothing=0,  # ETA from the mean rate since the start: jobs vary in length
                    mininterval=0,
                    # tqdm's default without the rate: room for the counts on 80 columns
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
                )
            )
            # log lines (Hydra's, the launchers') print above the bar instead of through it
            self._open.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
            self._bar.start_t = self.context.started  # the sweep's clock, not this object's
        self._thread = threading.Thread(target=self._poll, name="sweep-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.show(final=True)
        self._open.close()  # the log redirection, then the bar (left on its line)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.show()

    def postfix(self, counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {counts[k]}" for k in OUTCOMES) + f", cached {self.cached}"

    def show(self, final: bool = False) -> None:
        counts = _read(self.path)
        done = sum(counts.values())
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix(counts), refresh=False)
            self._bar.update(done - self._bar.n)  # redraws in place
            return
        total = max(self.context.total, 1)
        step = math.ceil(total / LINES)
        if done // step > self._shown // step or (final and done != self._shown):
            self._shown = done
            self.stream.write(self.line(done, counts) + "\n")
            self.stream.flush()

    def line(self, done: int, counts: dict[str, int]) -> str:
        from tqdm import tqdm

        text: str = tqdm.format_meter(
            done,
            self.context.total,
            time.time() - self.context.started,
            prefix=self.name,
            unit="job",
            postfix=self.postfix(counts),
            # tqdm puts ", " before the postfix
            bar_format="[{desc}] {n_fmt}/{total_fmt} jobs ({percentage:.0f}%){postfix} | "
            "elapsed {elapsed} | ETA {remaining}",
        )
        return text
