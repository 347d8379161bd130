"""The team tracking server: ``mlflow server`` over a local PostgreSQL cluster.

``python -m pipeline.server start [--port 5000] [--root mlruns]`` initialises a PostgreSQL
cluster in ``<root>/pg/`` (once), starts it on a free loopback port, starts ``mlflow server``
on 127.0.0.1 with that database as its backend store and ``<root>/artifacts`` as the served
artifact store, waits until ``/health`` answers and writes the PID files in
``<root>/server/``. ``stop`` stops exactly those processes. ``make server`` and
``make server-stop`` call these, and so does the tests' server fixture.

Also here, because every entry point needs it before any work: :func:`check_tracking_reachable`.
This module imports only the standard library at the top, so that check costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline import sysdeps

# postgres refuses to run as root; when we are root its files and processes belong to the
# system user that the Debian package creates.
PG_SYSTEM_USER = "postgres"
DB_USER = "mlflow"
DB_NAME = "mlflow"


class ServerError(RuntimeError):
    """Starting or stopping the server failed; the message says why, in one line."""


class TrackingUnreachable(RuntimeError):
    """The tracking URI names a server that does not answer like MLflow."""


# --- is the tracking server there? ------------------------------------------------------------


def check_tracking_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingUnreachable (one line naming ``uri``) unless an http(s) tracking URI
    answers MLflow's ``/health`` within ``timeout`` seconds. Other stores are local: no-op.

    Without this, MLflow retries a dead server 7 times with exponential backoff (about 250 s
    per request) before a traceback. The same reason bounds MLflow's own retries for the rest
    of the process, unless the user set them: a server that dies mid-sweep fails each job within
    seconds instead of minutes."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    try:
        parts.port  # noqa: B018 (raises ValueError on a malformed port)
    except ValueError:
        raise TrackingUnreachable(f"tracking URI {uri} is malformed: bad port") from None
    if not parts.hostname:
        raise TrackingUnreachable(f"tracking URI {uri} is malformed: no host")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # and MLflow prints two "View run at" lines per closed run to a server: 226 in a sweep
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(100).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        raise TrackingUnreachable(
            f"tracking server {uri} is not an MLflow server: GET /health gave HTTP {exc.code}"
        ) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnreachable(f"tracking server {uri} does not answer: {reason}") from None
    if body != "OK":
        raise TrackingUnreachable(
            f"tracking server {uri} is not an MLflow server: GET /health gave {body[:40]!r}"
        )


# --- ports and processes ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is gone for our purposes
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(
        process_alive(int(p.name))
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid_of(int(p.name)) == pgid
    )


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def stop_group(pgid: int, timeout: float = 5.0) -> None:
    """SIGTERM to the whole process group (uvicorn, its workers, huey consumers), then
    SIGKILL to whatever is left after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_for_health(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise ServerError(f"mlflow server exited ({proc.returncode}): {' | '.join(tail)}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise ServerError(f"mlflow server did not answer {url}/health within {timeout:.0f}s ({log})")


# --- PostgreSQL -------------------------------------------------------------------------------


def pg_bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServerError("PostgreSQL is not installed: apt-get install -y postgresql")


def ensure_postgres_installed() -> Path:
    """The PostgreSQL binaries, installed from Debian's package first if missing (as root)."""
    try:
        sysdeps.ensure(["postgresql"])
    except sysdeps.MissingPackages as exc:
        raise ServerError(str(exc)) from None
    return pg_bin_dir()


def as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", PG_SYSTEM_USER, "--", *cmd]


def give_to_pg_user(path: Path) -> None:
    """As root, the cluster's directory must belong to the user postgres runs as."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(PG_SYSTEM_USER)
    for p in [path, *path.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid)


def run_checked(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ServerError(f"{what} failed: {detail[-1] if detail else done.returncode}")
    return done.stdout


def init_cluster(pg_dir: Path, pgpass: Path, bin_dir: Path) -> None:
    """A new cluster in ``pg_dir/data`` with one password-protected superuser; the password
    goes to a pgpass file only this user reads, so it is never on a command line."""
    data = pg_dir / "data"
    if (data / "PG_VERSION").exists():
        return
    pg_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)
    pwfile = pg_dir / "initdb.pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    give_to_pg_user(pg_dir)
    try:
        run_checked(
            as_pg_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    DB_USER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ]
            ),
            "initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    pgpass.parent.mkdir(parents=True, exist_ok=True)
    pgpass.write_text(f"127.0.0.1:*:*:{DB_USER}:{password}\n")
    pgpass.chmod(0o600)


def start_cluster(pg_dir: Path, port: int, bin_dir: Path, durable: bool) -> None:
    options = [
        f"-p {port}",
        "-c listen_addresses=127.0.0.1",
        "-c unix_socket_directories=''",  # TCP on loopback only: no socket path to collide
    ]
    if not durable:  # tests: a crash loses a throwaway store, and writes are 10x faster
        options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    cmd = [str(bin_dir / "pg_ctl"), "-D", str(pg_dir / "data"), "-l", str(pg_dir / "postgres.log")]
    run_checked(as_pg_user([*cmd, "-w", "-t", "60", "-o", " ".join(options), "start"]), "pg_ctl")


def stop_cluster(pg_dir: Path, bin_dir: Path | None = None) -> None:
    data = pg_dir / "data"
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    try:
        bin_dir = bin_dir or pg_bin_dir()
        run_checked(
            as_pg_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        )
    except ServerError:
        # pg_ctl could not do it (binaries gone, stale file): the postmaster's pid, as last resort
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def create_database(port: int, bin_dir: Path, env: dict[str, str]) -> None:
    cmd = [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, DB_NAME]
    try:
        run_checked(cmd, "createdb", env=env)
    except ServerError as exc:
        if "already exists" not in str(exc):
            raise


# --- the server -------------------------------------------------------------------------------


@dataclass
class ServerInfo:
    uri: str  # what to export as MLFLOW_TRACKING_URI
    port: int
    pg_port: int
    mlflow_pid: int  # also its process group: the server runs in its own session
    postgres_pid: int
    backend_store_uri: str


def state_dir(root: Path) -> Path:
    return root / "server"


def read_state(root: Path) -> ServerInfo | None:
    path = state_dir(root) / "server.json"
    if not path.exists():
        return None
    return ServerInfo(**json.loads(path.read_text()))


def is_running(info: ServerInfo) -> bool:
    return process_alive(info.mlflow_pid) and process_alive(info.postgres_pid)


def start_server(
    root: Path, port: int | None = None, workers: int = 2, durable: bool = True
) -> ServerInfo:
    """Start PostgreSQL and ``mlflow server`` for the store in ``root``; returns once
    ``/health`` answers. A server already running for ``root`` is returned as it is."""
    root = root.resolve()
    running = read_state(root)
    if running is not None and is_running(running):
        return running
    if running is not None:  # a stale state from a crash: clear what may be left
        stop_server(root)
    port = port or free_port()
    if port_in_use(port):
        raise ServerError(f"port {port} on 127.0.0.1 is in use: choose another (PORT=...)")
    bin_dir = ensure_postgres_installed()
    pg_dir, state = root / "pg", state_dir(root)
    state.mkdir(parents=True, exist_ok=True)
    pgpass = state / "pgpass"
    init_cluster(pg_dir, pgpass, bin_dir)
    pg_port = free_port()
    start_cluster(pg_dir, pg_port, bin_dir, durable)
    env = {**os.environ, "PGPASSFILE": str(pgpass)}
    # MLflow's job runner (7 huey consumer processes) serves GenAI features (scorers, trace
    # archival) that training runs never use; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true restores it
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    backend = f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg_port}/{DB_NAME}"
    try:
        create_database(pg_port, bin_dir, env)
        log = state / "mlflow.log"
        cmd = [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--backend-store-uri", backend),
            "--serve-artifacts",
            *("--artifacts-destination", str(root / "artifacts")),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
        ]
        with log.open("ab") as out:
            # its own session and process group: it outlives `make server`, ignores a Ctrl-C
            # meant for the terminal, and stop_server reaches every worker and nothing else
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )  # fmt: skip
        (state / "mlflow.pid").write_text(f"{proc.pid}\n")
        postgres_pid = int((pg_dir / "data" / "postmaster.pid").read_text().split()[0])
        (state / "postgres.pid").write_text(f"{postgres_pid}\n")
        uri = f"http://127.0.0.1:{port}"
        info = ServerInfo(uri, port, pg_port, proc.pid, postgres_pid, backend)
        (state / "server.json").write_text(json.dumps(asdict(info), indent=1))
        wait_for_health(uri, proc, log, timeout=120)
    except BaseException:
        stop_server(root)
        raise
    return info


def stop_server(root: Path) -> bool:
    """Stop the mlflow server's process group and the PostgreSQL cluster of ``root``;
    False if nothing was running."""
    root = root.resolve()
    state = state_dir(root)
    stopped = False
    pid_file = state / "mlflow.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        # only ours: after a reboot the pid may belong to another program
        cmdline = Path(f"/proc/{pid}/cmdline")
        if group_alive(pid) and (not cmdline.exists() or b"mlflow" in cmdline.read_bytes()):
            stop_group(pid)
            stopped = True
    if (root / "pg" / "data" / "postmaster.pid").exists():
        stop_cluster(root / "pg")
        stopped = True
    for name in ("mlflow.pid", "postgres.pid", "server.json"):
        (state / name).unlink(missing_ok=True)
    return stopped


# --- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.server", description=__doc__)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--root", type=Path, default=Path("mlruns"), help="store directory")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="uvicorn workers (each imports MLflow: ~3 s of CPU at start)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            t0 = time.monotonic()
            info = start_server(args.root, args.port, args.workers)
            print(
                f"MLflow server {info.uri} (backend {info.backend_store_uri}, artifacts "
                f"{args.root.resolve() / 'artifacts'}), up in {time.monotonic() - t0:.1f}s; "
                f"pids in {state_dir(args.root.resolve())}/"
            )
            print(f"export MLFLOW_TRACKING_URI={info.uri}")
        elif args.command == "stop":
            print("server stopped" if stop_server(args.root) else "no server was running")
        else:
            found = read_state(args.root.resolve())
            if found is None or not is_running(found):
                print("no server running")
                return 1
            print(f"running: {found.uri} (backend {found.backend_store_uri})")
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
