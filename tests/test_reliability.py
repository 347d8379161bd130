"""Faults replayed: identical sweeps at once, SIGTERM and SIGKILL mid-sweep, bad input.

Signals and concurrency need real processes (``python -m pipeline``); the sweeps are tiny. What
is asserted is what a user relies on: no duplicate config hash among FINISHED children, no
RUNNING run left, one parent per set of jobs, no worker outliving its sweep, and one
``error:`` line (no traceback) with exit code 2 for bad input.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import Run

from pipeline.config import PROJECT_ROOT
from pipeline.job import run_job
from pipeline.procs import ProcessId, start_time
from pipeline.tracking import mark_stale_runs, sweep_lock
from tests.conftest import compose_cfg
from tests.test_sweep import CONTRACT, all_runs, run_app, split

SMALL = ["model=linear,scratch", "optim.lr=0.03,5"]  # 4 jobs, two of them diverge


def start(
    tmp_path: Path, name: str, *args: str, uri: str | None = None, **kw: object
) -> tuple[subprocess.Popen[bytes], Path]:
    """``python -m pipeline -m ...`` in the background, its output in a file."""
    out = tmp_path / f"{name}.out"
    env = dict(os.environ)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    cmd = [sys.executable, "-m", "pipeline", "-m", f"hydra.sweep.dir={tmp_path}/{name}", *args]
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env, **kw
        )  # type: ignore[call-overload]
    return proc, out


def wait_for(
    out: Path, text: str | int, proc: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    """Until the output holds ``text``, or (an int) its progress says that many jobs are done."""
    deadline = time.time() + timeout
    while not (
        text in out.read_text() if isinstance(text, str) else jobs_done(out.read_text()) >= text
    ):
        assert proc.poll() is None, out.read_text()[-3000:]
        assert time.time() < deadline, f"no {text!r} in:\n{out.read_text()[-3000:]}"
        time.sleep(0.05)


def jobs_done(output: str) -> int:
    """The most jobs done that a sweep's progress lines (no terminal) have reported."""
    return max((int(n) for n in re.findall(r"^\[\w+\] (\d+)/\d+ jobs", output, re.M)), default=0)


def finish(proc: subprocess.Popen[bytes], out: Path, code: int = 0) -> str:
    assert proc.wait(timeout=300) == code, out.read_text()[-3000:]
    text = out.read_text()
    assert "Traceback" not in text, text[-3000:]
    return text


def check_store(runs: list[Run], parents: int, configs: int) -> None:
    """One FINISHED run per config, no duplicate, nothing RUNNING."""
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    ps = split(runs)[0]
    assert len(ps) == parents
    jobs = [r for r in runs if "config_hash" in r.data.tags]  # children, and lone jobs
    finished = Counter(r.data.tags["config_hash"] for r in jobs if r.info.status == "FINISHED")
    assert len(finished) == configs and set(finished.values()) == {1}


# --- one sweep at a time ----------------------------------------------------------------------


def test_identical_sweeps_at_once_on_a_fresh_store(tmp_path: Path) -> None:
    """Two processes: both must migrate the store that does not exist yet, then one trains
    while the other waits for its lock and finds everything cached (a store that already
    has runs is the in-process tests' case: caching does not depend on concurrency)."""
    fresh = f"sqlite:///{tmp_path}/fresh/mlflow.db"  # no file yet: both migrate it at once
    launcher = "hydra/launcher=stacked"
    pairs = [start(tmp_path, n, launcher, *SMALL, uri=fresh) for n in ("a", "b")]
    outs = [finish(*p) for p in pairs]
    check_store(all_runs(mlflow.MlflowClient(tracking_uri=fresh)), parents=1, configs=4)
    assert sum("another sweep of the same jobs is running" in o for o in outs) <= 1


def test_the_server_claim_makes_a_second_identical_sweep_wait(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim used for tracking servers (here forced on the SQLite store)."""
    import pipeline.tracking as tracking

    monkeypatch.setattr(tracking, "sweep_lock_path", lambda uri, sweep_hash: None)
    monkeypatch.setattr(tracking, "CLAIM_SETTLE_S", 0.05)
    monkeypatch.setattr(tracking, "CLAIM_POLL_S", 0.05)
    exp = tracking.ensure_experiment(tracking_uri, "linreg")
    order: list[str] = []
    waited = threading.Event()

    def second() -> None:
        with sweep_lock(tracking_uri, exp, "h1", lambda holder: waited.set()):
            order.append("second")

    with sweep_lock(tracking_uri, exp, "h1", lambda holder: pytest.fail("nobody holds it")):
        thread = threading.Thread(target=second)
        thread.start()
        assert waited.wait(10)
        with sweep_lock(tracking_uri, exp, "h2", lambda holder: pytest.fail("another sweep")):
            order.append("different sweep, meanwhile")
        order.append("first")
    thread.join(10)
    assert order == ["different sweep, meanwhile", "first", "second"]

    # a claim left by a dead process is taken over
    dead = ProcessId(socket.gethostname(), 2**22 + 7, "1")
    tracking.get_client(tracking_uri).set_experiment_tag(exp, "sweep_claim.h3", f"{dead} x")
    with sweep_lock(tracking_uri, exp, "h3", lambda holder: pytest.fail("dead holder")):
        pass


# --- liveness ---------------------------------------------------------------------------------


def test_a_reused_pid_is_not_alive(client: mlflow.MlflowClient) -> None:
    me = ProcessId.current()
    assert me.started == start_time(os.getpid()) and me.alive() is True
    assert ProcessId(me.host, me.pid, "12345").alive() is False  # same pid, other process
    assert ProcessId("elsewhere", me.pid, me.started).alive() is None
    exp = client.create_experiment("linreg")
    reused = client.create_run(exp, tags={**me.tags(), "pid_start": "12345"})
    alive = client.create_run(exp, tags=me.tags())
    assert mark_stale_runs(client.tracking_uri, exp) == 1
    assert client.get_run(reused.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


# --- signals ----------------------------------------------------------------------------------


def test_sigterm_during_a_stacked_sweep_leaves_nothing_running(
    tmp_path: Path, client: mlflow.MlflowClient
) -> None:
    seeds = "seed=" + ",".join(map(str, range(12)))  # 12 groups of 2
    proc, out = start(tmp_path, "t", "hydra/launcher=stacked", "model=linear,scratch", seeds)
    wait_for(out, 4, proc)  # two of its 12 groups
    proc.send_signal(signal.SIGTERM)
    text = finish(proc, out, code=143)
    assert "interrupted: the open runs were closed KILLED" in text
    runs = all_runs(client)
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    (parent,), children = split(runs)
    assert parent.info.status == "KILLED" and 4 <= len(children) < 24


def test_a_signal_inside_a_store_write_is_raised_once_the_write_is_done(
    client: mlflow.MlflowClient,
) -> None:
    """SIGTERM delivered just after SQLAlchemy executed the run's metric INSERT (where a sweep's
    SIGTERM once landed: the open SQLite transaction then blocked every later write of the
    process, the KILLED status among them, and the sweep went on): the write completes, the
    run is closed as logged, then the interrupt is raised, and the store takes a write at once."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from pipeline.procs import Interrupted

    sent: list[str] = []

    def signal_inside(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not sent and statement.startswith("INSERT INTO metrics"):
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before this returns

    event.listen(Engine, "after_cursor_execute", signal_inside)
    try:
        with pytest.raises(Interrupted):
            run_job(compose_cfg("train.epochs=1"))
    finally:
        event.remove(Engine, "after_cursor_execute", signal_inside)
    assert sent
    (run,) = all_runs(client)
    assert run.info.status == "FINISHED" and run.data.metrics["updates"] == 100
    t0 = time.time()
    client.set_tag(run.info.run_id, "after", "interrupt")  # no transaction was left open
    assert time.time() - t0 < 5


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(text[text.rfind(")") + 2 :].split()[1])
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p}
        todo += kids - found
        found |= kids
    return found


def alive(pids: set[int]) -> set[int]:
    """The ones still running (zombies are dead)."""
    out = set()
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.add(p)
        except (OSError, IndexError):
            pass
    return out


def test_joblib_sweep_runs_in_workers_and_after_sigkill_the_next_sweep_resumes(
    tmp_path: Path,
    client: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one real joblib sweep of the suite (worker processes cost seconds to start): its
    jobs run in the workers and log what the basic launcher would; SIGKILL of the sweep ends
    the workers too; the same sweep again resumes under the same parent."""
    # 8 jobs of the scratch code (nn.Linear's torch.optim would import torch._dynamo, ~1 s,
    # in each worker: what is tested here is the launcher, not the model)
    grid = ["model=scratch", "optim.lr=0.01,0.02", "seed=0,1,2,3"]
    proc, out = start(tmp_path, "k", "hydra/launcher=joblib", *grid, start_new_session=True)
    wait_for(out, 2, proc)
    workers = descendants(proc.pid)
    assert len(workers) >= 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while alive(workers) and time.time() < deadline:
        time.sleep(0.2)
    assert alive(workers) == set(), "workers outlived their sweep by 10 s"
    (dead,), children = split(all_runs(client))
    assert dead.info.status == "RUNNING"  # nothing could close it: SIGKILL
    done = [c for c in children if c.info.status == "FINISHED"]
    assert len(done) >= 2 and {c.data.tags["mlflow.parentRunId"] for c in done} == {
        dead.info.run_id
    }
    for child in done:  # trained in a worker, with the default payload
        assert int(child.data.tags["pid"]) in workers
        assert set(child.data.metrics) >= CONTRACT
        # 300 updates, logged every 3rd: at most ~100 points a curve
        assert len(client.get_metric_history(child.info.run_id, "batch_loss")) == 100

    # the same sweep again (in this process, with the basic launcher: same jobs, same parent)
    run_app(monkeypatch, tmp_path, *grid)
    runs = all_runs(client)
    check_store(runs, parents=1, configs=8)
    assert split(runs)[0][0].data.tags["resumed"] == "true"
    # a worker's run is the run this process trains from the same config
    twin = done[0]
    params = twin.data.params
    overrides = [f"model={params['model.name']}", f"optim.lr={params['optim.lr']}"]
    run_job(compose_cfg(*overrides, f"seed={params['seed']}", "tracking.run_name=check"))
    check = [r for r in all_runs(client) if r.info.run_name == "check"][0]
    assert check.data.metrics["mse"] == twin.data.metrics["mse"]


# --- bad input --------------------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from pipeline.__main__ import cli

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # cli() sets it to 1: restored afterwards
    monkeypatch.setattr(sys, "argv", ["pipeline", *args])
    GlobalHydra.instance().clear()
    try:
        cli()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        GlobalHydra.instance().clear()
    return 0


BAD = [
    ("loss.reduction=avg", "expected one of [mean, sum"),
    ("model=foo", "available: linear, scratch"),
    ("optim.lr=abc", "could not be converted to Float"),
    ("seed=-1", "seed=-1"),
    ("data.true_w=[nan,1]", "finite"),
    ("optim.lr=nan", "finite"),
    ("loss.delta=inf", "finite"),
]


@pytest.mark.parametrize("mode", [[], ["-m", "hydra.sweep.dir=SWEEP"]], ids=["job", "sweep"])
def test_bad_input_is_one_line_and_exit_2(
    mode: list[str],
    tmp_path: Path,
    client: mlflow.MlflowClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mode = [m.replace("SWEEP", str(tmp_path / "sd")) for m in mode]
    for arg, says in BAD:
        assert run_cli(monkeypatch, *mode, arg) == 2, arg
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and says in err[0], (arg, err)
    assert all_runs(client) == []


def test_a_store_that_cannot_be_used_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.db").write_bytes(b"not a database at all")
    (tmp_path / "afile").write_text("")
    stores = {
        f"sqlite:///{tmp_path}/bad.db": "is not a SQLite database",
        "garbage": "is not a supported store",
        "foo://bar": "is not a supported store",
        f"sqlite:///{tmp_path}/afile/mlflow.db": "cannot create",
    }
    for uri, says in stores.items():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        for mode in ([], ["-m", f"hydra.sweep.dir={tmp_path}/sd", "sweep=smoke"]):
            t0 = time.time()
            assert run_cli(monkeypatch, *mode) == 2, uri
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and says in err[0], (uri, mode, err)
            assert time.time() - t0 < 15


def test_report_and_rerun_of_an_unknown_sweep_are_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.report import main as report
    from pipeline.rerun import main as rerun

    assert report(["--sweep", "nosuchid"]) == 2
    assert rerun(["--sweep", "nosuchid"]) == 2
    assert rerun(["nosuchid"]) == 2
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith("error:") for ln in lines), lines


def test_the_plugin_scan_imports_nothing_heavy() -> None:
    code = (
        "import sys, hydra_plugins.linreg_sweep; "
        "print(sorted(m for m in ('torch', 'mlflow', 'pandas', 'ray', 'pipeline.sweep') "
        "if m in sys.modules));"
        "from hydra.core.plugins import Plugins; from hydra.plugins.plugin import Plugin; "
        "print(sorted(p.__name__ for p in Plugins.instance().discover(Plugin) "
        "if p.__module__.startswith('hydra_plugins.linreg_sweep')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    plugins = "['GridsSweeper', 'RayStackedLauncher', 'StackedLauncher']"
    assert out.stdout.split("\n")[:2] == ["[]", plugins]
