"""A local Ray head for sweeps (``make cluster`` / ``make cluster-stop``), and what a driver
needs to reach a cluster: its address and the environment that its workers must share.

``python -m pipeline.cluster start [--num-cpus N] [--dir DIR]`` starts ``ray start --head`` on
127.0.0.1 with free ports, a bounded object store and no dashboard, waits until it answers,
and writes its address to ``DIR/address`` (default ``mlruns/ray/``). ``stop`` ends exactly the
processes of that head: the ones whose command line names its private temp dir, and their
descendants (Ray workers rename themselves ``ray::...``), never another Ray on the machine
(``ray stop`` would kill every Ray of every user). Ray is imported only by the drivers and
workers (:mod:`pipeline.ray_launcher`), never here: this module stays cheap to import.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PROJECT_ROOT

DEFAULT_DIR = PROJECT_ROOT / "mlruns" / "ray"
OBJECT_STORE_MB = 200  # per node; the jobs pass only configs and small results through it
# The driver's variables that a worker must see as the driver does: where runs go, where
# Hydra writes, and the sweep context (today in overrides; later possibly in LINREG_*).
FORWARDED_PREFIXES = ("MLFLOW_", "LINREG_")
# Ray's switch for "no multi-node cluster here": with it, Ray keeps 127.0.0.1 as 127.0.0.1
# instead of rewriting it to this host's outward address (the local head is loopback only).
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Head:
    address: str  # host:port of the GCS, what RAY_ADDRESS names
    temp_dir: str  # Ray's private temp dir: every process of this head names it
    state_dir: str  # where address / head.json live

    def save(self) -> None:
        d = Path(self.state_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "head.json").write_text(json.dumps(self.__dict__, indent=1))
        (d / "address").write_text(self.address + "\n")

    @classmethod
    def load(cls, state_dir: Path | str) -> Head | None:
        path = Path(state_dir) / "head.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def pids(self) -> list[int]:
        return head_pids(self.temp_dir, self.address)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name (2nd field) may contain spaces: split after its closing paren
        out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def head_pids(temp_dir: str, address: str | None = None) -> list[int]:
    """Every live process of the head whose private temp dir is ``temp_dir``, and the ones
    started for its GCS ``address`` that do not name the temp dir (Ray's client server,
    ``ray.util.client.server --address=<gcs>``, which outlives its parent otherwise)."""
    parents = _parents()
    flag = f"--address={address} " if address else None
    roots = {
        pid
        for pid in parents
        if pid != os.getpid()
        and (temp_dir in (cmd := _cmdline(pid)) or (flag is not None and flag in cmd))
    }
    found, changed = set(roots), True
    while changed:  # descendants: workers (ray::IDLE, ray::run_group, ...) and helpers
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(found)


def start(
    num_cpus: int | None = None,
    state_dir: Path | str = DEFAULT_DIR,
    object_store_mb: int = OBJECT_STORE_MB,
    timeout: float = 60.0,
) -> Head:
    """Start a Ray head on 127.0.0.1 (free ports, no dashboard) and return once it is up."""
    state_dir = Path(state_dir)
    old = Head.load(state_dir)
    if old is not None and old.pids():
        raise RuntimeError(
            f"a Ray head is already running at {old.address} (state in {state_dir}); "
            "stop it first: make cluster-stop"
        )
    # short: Ray's unix sockets live under it (AF_UNIX paths are limited to 107 bytes)
    temp_dir = tempfile.mkdtemp(prefix="linreg-ray-", dir="/tmp")
    port = free_port()
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    cmd = [
        ray,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus or os.cpu_count() or 1}",
        f"--object-store-memory={object_store_mb * 1024 * 1024}",
        "--include-dashboard=false",  # (its headless job API still runs, on loopback)
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        # every other port free too, so that several heads (make cluster, tests) coexist
        f"--ray-client-server-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--min-worker-port=0",  # 0: workers bind random free ports
        "--max-worker-port=0",
    ]
    head = Head(address=f"127.0.0.1:{port}", temp_dir=temp_dir, state_dir=str(state_dir))
    head.save()  # first, so that a failed start can still be stopped
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **{SINGLE_NODE_ENV: "0"})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        stop(state_dir)
        raise RuntimeError(f"ray start failed:\n{proc.stdout}\n{proc.stderr}")
    wait_until_up(head.address, timeout)
    return head


def wait_until_up(address: str, timeout: float) -> None:
    """The GCS port accepts connections (``ray start`` itself returns once the raylet is up)."""
    host, port = address.rsplit(":", 1)
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            if time.time() > deadline:
                raise TimeoutError(f"Ray head {address} not up after {timeout:.0f}s") from None
            time.sleep(0.2)


def stop(state_dir: Path | str = DEFAULT_DIR, timeout: float = 3.0) -> int:
    """Stop the head recorded in ``state_dir`` (SIGTERM, then SIGKILL after ``timeout``: the
    GCS, raylet and agents wait on each other and can ignore SIGTERM for long, as in
    ``ray stop --force``); the number of processes stopped. Nothing else is touched."""
    head = Head.load(state_dir)
    if head is None:
        return 0
    pids = head.pids()
    stopped = set(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + (timeout if sig == signal.SIGTERM else 5)
        while time.time() < deadline and head.pids():
            time.sleep(0.1)
        if not head.pids():
            break
        pids = head.pids()
        stopped.update(pids)
    left = head.pids()
    if left:
        raise RuntimeError(f"Ray processes still alive after SIGKILL: {left}")
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    for name in ("head.json", "address"):
        (Path(state_dir) / name).unlink(missing_ok=True)
    return len(stopped)


# --- what a driver needs ----------------------------------------------------------------------


def ray_address(state_dir: Path | str = DEFAULT_DIR) -> str:
    """$RAY_ADDRESS, else the head that ``make cluster`` recorded; a sweep never starts a
    throwaway local Ray by accident."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return address
    path = Path(state_dir) / "address"
    if path.exists():
        return path.read_text().strip()
    raise RuntimeError("no Ray cluster: start one with `make cluster`, or set RAY_ADDRESS")


def is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rsplit(":", 1)[0]
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


def worker_env(tracking_uri: str) -> dict[str, str]:
    """The variables every Ray worker gets from the driver (runtime_env env_vars): the
    driver's MLFLOW_TRACKING_URI as resolved (so workers log where the driver reads), and
    the driver's other MLFLOW_* and LINREG_* variables."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def ray_init_kwargs(tracking_uri: str) -> dict[str, object]:
    """Arguments of ``ray.init`` for a sweep's driver: connect to the existing cluster."""
    address = ray_address()
    kwargs: dict[str, object] = {
        "address": address,
        "runtime_env": {"env_vars": worker_env(tracking_uri)},
        "log_to_driver": True,
    }
    if is_loopback(address):  # the driver's node is the loopback head itself
        kwargs["_node_ip_address"] = "127.0.0.1"
    return kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--num-cpus", type=int, default=None, help="default: every core")
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="where the address is written")
    parser.add_argument("--object-store-mb", type=int, default=OBJECT_STORE_MB)
    args = parser.parse_args(argv)
    if args.action == "start":
        try:
            head = start(args.num_cpus, args.dir, args.object_store_mb)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Ray head up at {head.address} ({len(head.pids())} processes, temp {head.temp_dir})")
        print(f"export RAY_ADDRESS={head.address}")
    elif args.action == "stop":
        n = stop(args.dir)
        print(f"stopped {n} Ray processes" if n else "no Ray head recorded in " + args.dir)
    else:
        recorded = Head.load(args.dir)
        pids = recorded.pids() if recorded else []
        if not recorded or not pids:
            print("no Ray head running")
            return 1
        print(f"Ray head at {recorded.address}: {len(pids)} processes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
