"""Processes and locks: who is alive, who may run a sweep, and how a process stops.

Light on purpose (standard library only): the tracking layer, the sweeper, the launchers and
the worker processes all use it.

- **Liveness that cannot lie**: a process is named by host, pid and its start time (Linux
  ``/proc/<pid>/stat`` field 22, in clock ticks since boot). A dead process cannot keep that
  triple alive: a reused pid has another start time.
- **File locks** (``fcntl.flock``) next to a SQLite store: one for creating/migrating the store,
  one per sweep. The kernel releases them when their process dies, even by SIGKILL.
- **Signals**: SIGTERM is turned into ``KeyboardInterrupt`` like Ctrl-C, so every open run is
  closed KILLED on the way out; a second signal during that cleanup is ignored.
- **Watchdog**: a worker process (joblib) watches the sweep's main process and ends itself
  when that process is gone, so a SIGKILL of the sweep leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc/<pid>/stat`` field 22), or None if there is
    no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 2 (the command) is in parentheses and may hold spaces: count after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None  # fields[0] is field 3


@dataclass(frozen=True)
class ProcessId:
    """A process as other processes can check it: host, pid and start time."""

    host: str
    pid: int
    started: str  # "" when unknown (no /proc): then the pid alone decides

    @classmethod
    def current(cls) -> ProcessId:
        return cls(socket.gethostname(), os.getpid(), start_time(os.getpid()) or "")

    def tags(self) -> dict[str, str]:
        """Tags recorded on every run at creation."""
        return {"host": self.host, "pid": str(self.pid), "pid_start": self.started}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ProcessId | None:
        pid = tags.get("pid", "")
        if not pid.isdigit() or "host" not in tags:
            return None
        return cls(tags["host"], int(pid), tags.get("pid_start", ""))

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"

    @classmethod
    def parse(cls, text: str) -> ProcessId | None:
        host, _, rest = text.rpartition(":")
        host, _, pid = host.rpartition(":")
        if not pid.isdigit():
            return None
        return cls(host, int(pid), rest)

    def alive(self) -> bool | None:
        """True/False for a process of this host; None for another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        now = start_time(self.pid)
        if now is not None:
            return not self.started or now == self.started
        if Path("/proc").is_dir():
            return False
        try:  # no /proc: the pid alone
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


# --- file locks -------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(
    path: Path, on_wait: Callable[[str], None] | None = None, note: str = ""
) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing). When another process holds it,
    ``on_wait(holder)`` is called once (holder: what that process wrote in the file) and the
    lock is waited for. ``note`` is written into the file while held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh: IO[str] = open(path, "a+")  # noqa: SIM115 (held for the block)
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                fh.seek(0)
                on_wait(fh.read().strip() or "another process")
            fcntl.flock(fh, fcntl.LOCK_EX)
        if note:
            fh.seek(0)
            fh.truncate()
            fh.write(note)
            fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


# --- signals ----------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every open run is closed KILLED."""


# a signal that arrived inside deferred_interrupts(), raised when the outermost block ends
_deferring = 0
_pending: KeyboardInterrupt | None = None


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """A store write that SIGTERM/SIGINT must not cut in half: the interrupt is raised when
    the block ends instead. Raised inside SQLAlchemy's ``executemany``, it left that SQLite
    write transaction open on a pooled connection, and every later write of the process (the
    KILLED status among them) waited out the busy timeout and failed. Main thread only: that
    is where Python runs signal handlers. Also usable as a decorator."""
    global _deferring, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if _deferring == 0 and _pending is not None:
            interrupt, _pending = _pending, None
            raise interrupt


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, CI timeouts) raises :class:`Interrupted` in the main thread, as SIGINT
    raises KeyboardInterrupt; once one of them arrived, further SIGTERM/SIGINT are ignored
    until the block is left, so the cleanup that closes the runs is not cut short. Nested
    uses keep the outermost handlers. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        global _pending
        nonlocal fired
        if fired:
            print(f"(signal {signum} ignored: closing the open runs)", file=sys.stderr)
            return
        fired = True
        is_int = signum == signal.SIGINT
        interrupt = KeyboardInterrupt() if is_int else Interrupted(f"signal {signum}")
        if _deferring:  # inside a store write: raised when it is done
            _pending = interrupt
            return
        raise interrupt

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    if getattr(previous[signal.SIGTERM], "_linreg", False):
        yield  # an outer block already handles them
        return
    handler._linreg = True  # type: ignore[attr-defined]
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- the worker watchdog ----------------------------------------------------------------------

_watchdog: threading.Thread | None = None


def watch_owner(owner: ProcessId, poll: float = 0.5, grace: float = 3.0) -> None:
    """In a worker process that ``owner`` (the sweep's main process) started (joblib's loky
    workers): when the owner is gone, SIGTERM this process (its open run closes KILLED), and
    exit hard ``grace`` seconds later. Started once per process; does nothing in the owner
    itself, nor in processes it did not start (Ray workers outlive drivers by design)."""
    global _watchdog
    if _watchdog is not None or owner.pid == os.getpid() or owner.pid != os.getppid():
        return

    def watch() -> None:
        while owner.alive() is not False:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(3)

    _watchdog = threading.Thread(target=watch, name="linreg-watchdog", daemon=True)
    _watchdog.start()
