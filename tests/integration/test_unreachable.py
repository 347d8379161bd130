"""A tracking URI that does not answer, or not like MLflow: one line naming it, in seconds."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from pipeline.server import TrackingUnreachable, check_tracking_reachable, free_port
from tests.integration.conftest import run_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def not_mlflow() -> Iterator[str]:
    """An HTTP server on loopback that answers 404 to everything (say, a wrong port)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def assert_fails_fast(uri: str, *args: str, says: str) -> None:
    t0 = time.monotonic()
    done = run_pipeline(*args, timeout=60)
    elapsed = time.monotonic() - t0
    assert done.returncode != 0
    assert elapsed < 15, f"took {elapsed:.1f}s"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: ") and uri in line and says in line
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("sweep", [False, True], ids=["job", "sweep"])
def test_nothing_listening(monkeypatch: pytest.MonkeyPatch, sweep: bool) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = ["-m", "sweep=smoke"] if sweep else []
    assert_fails_fast(uri, *args, says="does not answer")


def test_not_an_mlflow_server(monkeypatch: pytest.MonkeyPatch, not_mlflow: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", not_mlflow)
    assert_fails_fast(not_mlflow, says="is not an MLflow server")


def test_check_accepts_a_live_server_and_local_stores(on_server: str, tracking_uri: str) -> None:
    check_tracking_reachable(on_server)
    check_tracking_reachable(on_server + "/")
    check_tracking_reachable(tracking_uri)  # sqlite: nothing to probe
    with pytest.raises(TrackingUnreachable, match="malformed"):
        check_tracking_reachable("http://127.0.0.1:port")
