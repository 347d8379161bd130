"""`make ui` end to end: a small sweep in a temporary store, ``python -m pipeline.ui`` on a
free loopback port, Debian's chromium (driven by Playwright, never downloaded) on the URL it
prints; then SIGTERM must stop the whole server tree and free the port.

Screenshots of what a user sees are saved in the test's tmp dir (runs.png, compare.png,
mse.png, search.png)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.entities import Run

from pipeline.config import PROJECT_ROOT
from pipeline.server import free_port, group_alive, port_in_use, process_alive, stop_group

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# huber at lr 0.03 is the one child with w_error < 1e-3 among two huber runs (10 epochs)
# (the stacked launcher: the 4 jobs train as one computation, the numbers of the d2l code)
SWEEP = ["-m", "hydra/launcher=stacked", "loss=mse,huber", "optim.lr=0.03,0.1", "train.epochs=10"]
README_SEARCH = 'metrics.w_error < 1e-3 and params.loss = "huber"'
COLUMNS = ["lr", "batch_size", "loss", "reduction", "model", "seed", "mse", "w_error", "diverged"]


@dataclass
class UI:
    proc: subprocess.Popen[bytes]
    port: int
    url: str  # the sweep URL that `make ui` printed
    uri: str  # the store
    shots: Path


def children_of(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "LINREG_OUTPUTS": str(tmp / "hydra")}
    run = [sys.executable, "-m", "pipeline", *SWEEP]
    done = subprocess.run(run, env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    port = free_port()
    log = tmp / "ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.ui", "--port", str(port)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace")
            url = next((ln.split()[-1] for ln in text.splitlines() if "latest sweep:" in ln), "")
            if url:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    pass
            time.sleep(0.3)
        else:
            pytest.fail(f"`make ui` did not come up: {log.read_text()[-2000:]}")
        yield UI(proc, port, url, uri, tmp)
    finally:
        # by PID, even when a test failed: the server's own process group, then ui itself
        for child in children_of(proc.pid):
            if group_alive(child):
                stop_group(child)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sweep_runs(client: mlflow.MlflowClient, experiment: str) -> tuple[Any, Run, list[Run]]:
    """The experiment, its one sweep's parent run and that sweep's children."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    (parent,) = client.search_runs([exp.experiment_id], "tags.sweep_parent = 'true'")
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return exp, parent, children


def test_sweep_url_opens_training_runs_with_compare_and_search(ui: UI) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a loaded CI machine renders slowly

    client = mlflow.MlflowClient(ui.uri)
    exp, parent, children = sweep_runs(client, "linreg")
    names = sorted(c.info.run_name for c in children)
    matching = client.search_runs([exp.experiment_id], README_SEARCH)
    assert len(children) == 4 and 0 < len(matching) < len(children)
    assert parent.info.run_id in ui.url and f"/experiments/{exp.experiment_id}/runs" in ui.url

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 2400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(ui.url)
            rows = page.locator(".ag-pinned-left-cols-container .ag-row")
            expect(rows).to_have_count(len(children))
            page.screenshot(path=ui.shots / "runs.png")
            # the training view (not GenAI's traces), filtered to the sweep's children
            expect(page.get_by_role("button", name="Model training")).to_be_visible()
            shown = sorted(t.splitlines()[1] for t in rows.all_inner_texts())
            assert shown == names
            headers = set(page.get_by_role("columnheader").all_inner_texts())
            assert set(COLUMNS) <= headers, headers
            by_mse = sorted(children, key=lambda c: c.data.metrics["mse"])
            assert rows.first.inner_text().splitlines()[1] == by_mse[0].info.run_name  # best first

            # two children side by side: params and the mse chart
            rows.nth(0).get_by_role("checkbox").check()
            rows.nth(1).get_by_role("checkbox").check()
            page.get_by_role("button", name="Compare").click()
            expect(page.get_by_text("Comparing 2 Runs")).to_be_visible()
            for param in ("optim.lr", "train.batch_size", "loss.name", "seed"):
                expect(page.get_by_role("rowheader", name=param, exact=True)).to_be_visible()
            loss_row = page.get_by_role("row").filter(
                has=page.get_by_role("rowheader", name="loss.name", exact=True)
            )
            compared = {c.data.params["loss.name"] for c in by_mse[:2]}
            assert set(loss_row.inner_text().split()[1:]) == compared
            page.screenshot(path=ui.shots / "compare.png", full_page=True)
            # the compare page re-renders as its runs load, which can swallow a click on a
            # loaded machine: click again while the metric page's chart has not opened
            chart = page.get_by_test_id("experiment-view-compare-runs-card")
            for attempt in range(3):
                page.get_by_role("link", name="mse", exact=True).click()
                try:
                    expect(chart).to_be_visible(timeout=20_000)
                    break
                except AssertionError:
                    assert attempt < 2, "the mse link never opened the metric page"
            expect(chart.get_by_role("heading", name="mse", exact=True)).to_be_visible()
            expect(chart.locator(".js-plotly-plot")).to_be_visible()
            for run in by_mse[:2]:  # one curve per compared run, named in the legend
                expect(chart.get_by_text(f"{run.info.run_name} (mse)")).to_be_visible()
            page.screenshot(path=ui.shots / "mse.png")

            # the README's search, typed into the search box
            page.goto(ui.url)
            expect(rows).to_have_count(len(children))
            box = page.get_by_test_id("search-box")
            box.fill(README_SEARCH)
            box.press("Enter")
            expect(rows).to_have_count(len(matching))
            shown = sorted(t.splitlines()[1] for t in rows.all_inner_texts())
            assert shown == sorted(r.info.run_name for r in matching)
            page.screenshot(path=ui.shots / "search.png")
        finally:
            browser.close()


def test_cells_url_shows_one_row_per_cell_with_the_seeds_mean(ui: UI) -> None:
    """`make ui`'s second URL: a sweep's runs grouped by the `cell` tag, one collapsed row per
    cell whose metrics are the mean over its seeds. The fixture's sweep has one seed per
    cell, so this test trains three seeds of two cells in an experiment of its own (the other
    tests see only theirs) and opens that sweep's grouped view the way `make ui` builds it."""
    from playwright.sync_api import expect, sync_playwright

    from pipeline.ui import sweep_urls

    expect.set_options(timeout=60_000)
    printed = (ui.shots / "ui.log").read_text()
    assert any(
        ln.startswith("by cell (seeds averaged): ")
        and ln.endswith("-cells&workflowType=machine_learning")
        for ln in printed.splitlines()
    ), printed
    env = {**os.environ, "MLFLOW_TRACKING_URI": ui.uri, "LINREG_OUTPUTS": str(ui.shots / "hydra")}
    sweep = ["-m", "hydra/launcher=stacked", "loss=mse,huber", "optim.lr=0.1", "seed=0,1,2"]
    sweep.append("tracking.experiment=cells")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *sweep],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _, parent, children = sweep_runs(mlflow.MlflowClient(ui.uri), "cells")
    cells: dict[str, list[float]] = {}
    for c in children:
        cells.setdefault(c.data.tags["cell"], []).append(c.data.metrics["mse"])
    assert len(cells) == 2 and all(len(v) == 3 for v in cells.values())
    _, url = sweep_urls(ui.uri, f"http://127.0.0.1:{ui.port}", parent)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 2400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            rows = page.locator(".ag-pinned-left-cols-container .ag-row")
            expect(rows).to_have_count(len(cells))  # collapsed: the groups, no run rows
            expect(page.get_by_text("Group by: cell")).to_be_visible()
            page.screenshot(path=ui.shots / "cells.png")
            values = page.locator(".ag-center-cols-container .ag-row").all_inner_texts()
            for name, text in zip(rows.all_inner_texts(), values, strict=True):
                cell = next(ln for ln in name.splitlines() if ln.startswith("Group: "))[7:]
                assert str(len(cells[cell])) in name.splitlines()  # its run count
                means = [
                    float(v.removesuffix(" (average)"))
                    for v in text.splitlines()
                    if v.endswith(" (average)")
                ]
                expected = sum(cells[cell]) / len(cells[cell])
                assert any(m == pytest.approx(expected, rel=1e-9) for m in means), (means, expected)
        finally:
            browser.close()


def test_sigterm_stops_the_whole_ui_tree(ui: UI) -> None:
    (server,) = children_of(ui.proc.pid)  # `mlflow ui`, in its own process group
    tree = [int(p) for p in os.listdir("/proc") if p.isdigit() and pid_group(int(p)) == server]
    assert len(tree) >= 2  # mlflow ui and uvicorn at least
    ui.proc.send_signal(signal.SIGTERM)
    assert ui.proc.wait(timeout=30) == 0
    assert not port_in_use(ui.port)
    assert [pid for pid in tree if process_alive(pid)] == []
    assert not group_alive(server)


def pid_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
