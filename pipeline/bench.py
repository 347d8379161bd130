"""``make bench``: one table of wall times and ratios, measured in one run on this machine.

Over the grid G (conf/sweep/bench.yaml: {scratch, linear} x {mse mean, mse sum, huber} x lr
{0.003, 0.01, 0.03, 0.1, 0.3} x B {1, 10, 100, 1000}, 3 epochs: 120 configs) it measures

- training only, in this process: the seeds' own loops (:mod:`pipeline.seeds_loops`), our
  sequential d2l steps and our stacked step;
- tracking only, in this process, on one store, run by run in turns: MLflow's bare floor
  (``create_run`` + one ``log_batch`` of our payload + ``set_terminated``) against ours
  (:class:`pipeline.tracking.RunLogger`: tags at creation, the payload, the config artifact);
- end to end, each command in its own process into a fresh store (start-up, imports, store
  creation, planning, training, logging, summary): the plain Hydra + MLflow app
  (:mod:`pipeline.bench_plain`, Hydra's basic launcher) over G against ours with its payload
  (``train.log_every`` past the last update: epoch metrics only) and with our default payload
  (``train.log_every=0``: at most ~200 points a curve), our basic and joblib launchers, and the
  ``faq`` preset, fresh and then cached (every job already FINISHED).

Each end-to-end row reports its peak resident memory and the metric points its store holds per
run (equal payloads are checked, not assumed). Ratios are the result: the machine has 2 cores
that other work may share, so the seconds move more than the ratios between rows measured
back to back. ``--quick`` skips the slow rows (basic, joblib, faq).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from mlflow.entities import Metric, Param, RunTag
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.bench_ray import Measured, measure_sweep, run_measured
from pipeline.config import PROJECT_ROOT, register_configs
from pipeline.identity import flatten, to_container
from pipeline.seeds_loops import seeds_train
from pipeline.store import get_client
from pipeline.sweep import expand
from pipeline.tracking import RunLogger, history_metrics, run_tags
from pipeline.train import History, group_by_schedule, resolve_engine, train, train_one
from pipeline.views import view_metrics, view_params

# G as the plain app's command line (its loss choice names the loss and reduction at once)
PLAIN_GRID = (
    "model=linear,scratch",
    "loss=mse_mean,mse_sum,huber",
    "lr=0.003,0.01,0.03,0.1,0.3",
    "batch_size=1,10,100,1000",
)
EPOCHS_ONLY = "train.log_every=1000000000"  # past the last update: no per-update points


def grid_configs() -> list[DictConfig]:
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        full = compose("config", overrides=["sweep=bench"], return_hydra_config=True)
        grids = OmegaConf.to_container(full.hydra.sweeper.grids, resolve=False)
        assert isinstance(grids, dict)
        return [compose("config", overrides=overrides) for _, overrides in expand(grids, [])]  # type: ignore[arg-type]


def seeds_loop(cfg: DictConfig) -> None:
    """One config of G trained by the seeds' code."""
    t, loss = cfg.train, cfg.loss
    args = (loss.name.value, loss.reduction.value, cfg.optim.lr, t.batch_size, t.epochs)
    seeds_train(cfg.model.name.value, *args, cfg.data.n, cfg.data.n_val)


def each(fn: Callable[[DictConfig], object], cfgs: list[DictConfig]) -> None:
    for cfg in cfgs:
        fn(cfg)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- tracking: MLflow's floor against ours, run by run on one store ---------------------------


def tracking_per_run(
    cfgs: list[DictConfig], hists: list[History], store: Path
) -> tuple[float, float]:
    """Seconds per run of MLflow's bare floor and of our RunLogger, on one fresh store, in
    turns (floor run i, our run i) so that load and store size weigh on both alike. The floor
    logs our payload (the same params, tags and metrics) with its payload built beforehand;
    ours builds its own, then adds what the floor does not write (the config artifact)."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = get_client(uri)
    exp = client.create_experiment("floor", artifact_location=(store / "floor").as_uri())
    floor = ours = 0.0
    for cfg, hist in zip(cfgs, hists, strict=True):
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.tracking.uri = uri
        now = int(time.time() * 1000)
        params = [Param(k, str(v)) for k, v in flatten(to_container(cfg)).items()]
        params += view_params(cfg)
        tags = [RunTag(k, v) for k, v in run_tags(cfg, None).items()]
        metrics = history_metrics(hist, now) + view_metrics(cfg, now)
        metrics.append(Metric("train_time_s", 0.0, now, 0))
        t = time.perf_counter()
        rid = client.create_run(exp).info.run_id
        client.log_batch(rid, metrics=metrics, params=params, tags=tags)
        client.set_terminated(rid, "FINISHED")
        floor += time.perf_counter() - t
        t = time.perf_counter()
        with RunLogger(cfg) as run:
            run.finish(hist, train_time_s=0.0)
        ours += time.perf_counter() - t
    return floor / len(cfgs), ours / len(cfgs)


# --- end to end -------------------------------------------------------------------------------


def points_per_run(store: Path) -> float:
    """Metric points per run in a store, sweep parents left out. Counted with SQL on MLflow's
    ``metrics`` table, read only: the public API would take one call per run and metric."""
    db = store / "mlflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        parents = "SELECT run_uuid FROM tags WHERE key = 'sweep_parent'"
        runs, points = conn.execute(
            f"SELECT count(DISTINCT run_uuid), count(*) FROM metrics "
            f"WHERE run_uuid NOT IN ({parents})"
        ).fetchone()
    return points / runs if runs else 0.0


def plain_app(store: Path) -> Measured:
    """The plain Hydra + MLflow app over G into a fresh store (its own working directory, so
    nothing it writes lands in the project)."""
    store.mkdir(parents=True)
    path = os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "pipeline.bench_plain", "-m", *PLAIN_GRID]
    return run_measured([*cmd, f"hydra.sweep.dir={store / 'multirun'}"], env, cwd=store)


Row = dict[str, object]
PLAIN = "plain Hydra+MLflow app, G (basic launcher)"


def note(r: Row) -> Row:
    """A row as soon as it is measured (stderr), so that a long bench shows its progress."""
    seconds = r["seconds"]
    assert isinstance(seconds, float)
    print(f"  {r['what']}: {seconds:.3g} s, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return r


def row(what: str, m: Measured, store: Path | None = None, target: str = "") -> Row:
    out: Row = {"what": what, "seconds": m.seconds, "peak MiB": m.peak_mib, "target": target}
    if store is not None:
        out["points/run"] = points_per_run(store)
    return note(out)


def end_to_end(tmp: Path, quick: bool) -> list[Row]:
    """The end-to-end rows, each a fresh process into a fresh store; the rows over G get
    their ratio to the plain app."""
    same, default = tmp / "same", tmp / "default"
    rows = [
        row(PLAIN, plain_app(tmp / "plain"), tmp / "plain"),
        row(
            "ours, stacked, G, the plain app's payload",
            measure_sweep("stacked", same, args=(EPOCHS_ONLY,)),
            same,
            "<= 0.15 (0.1)",
        ),
        row(
            "ours, stacked, G, default payload",
            measure_sweep("stacked", default),
            default,
            "<= 0.3",
        ),
    ]
    if not quick:
        for launcher in ("basic", "joblib"):
            m = measure_sweep(launcher, tmp / launcher)
            rows.append(row(f"ours, {launcher}, G, default payload", m, tmp / launcher))
    plain = rows[0]["seconds"]
    assert isinstance(plain, float)
    for r in rows:
        assert isinstance(r["seconds"], float)
        r["ratio"] = r["seconds"] / plain
    if not quick:
        faq = tmp / "faq"
        rows.append(
            row(
                "make sweep (faq preset, stacked, report)",
                measure_sweep("stacked", faq, preset="faq"),
            )
        )
        again = measure_sweep("stacked", faq, preset="faq")
        rows.append(row("the same again: every faq job cached", again, target="<= 5 s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip basic, joblib and faq")
    parser.add_argument("--skip-sweeps", action="store_true", help="only the in-process rows")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    random.seed(0)
    cfgs = grid_configs()
    n = len(cfgs)
    seeds = timed(lambda: each(seeds_loop, cfgs))
    sequential = timed(lambda: each(train_one, cfgs))
    hists: list[History] = [History()] * n
    stacked_cfgs = [c.copy() for c in cfgs]
    for c in stacked_cfgs:
        resolve_engine(c, stacking=True)

    def stacked() -> None:
        for idx in group_by_schedule(stacked_cfgs):
            for i, h in zip(idx, train([stacked_cfgs[i] for i in idx]), strict=True):
                hists[i] = h

    stacked_s = timed(stacked)
    rows: list[Row] = [
        {"what": "seeds' loops (d2l 3.2/3.3), training only", "seconds": seeds, "ratio": 1.0},
        {"what": "ours, sequential (d2l steps), training only", "seconds": sequential},
        {"what": "ours, stacked, training only", "seconds": stacked_s, "target": "<= 0.01"},
    ]
    for r in rows:
        note(r)
    rows[1]["ratio"], rows[2]["ratio"] = sequential / seeds, stacked_s / seeds
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        floor, ours = tracking_per_run(stacked_cfgs, hists, tmp / "tracking")
        rows += [
            {"what": "MLflow floor per run (create, log_batch, terminate)", "seconds": floor},
            {
                "what": "ours per run (RunLogger), same store",
                "seconds": ours,
                "ratio": ours / floor,
                "target": "<= 1.5",
            },
        ]
        note(rows[-2]), note(rows[-1])
        if not args.skip_sweeps:
            rows += end_to_end(tmp, args.quick)

    def shown(x: object) -> str:
        return f"{x:.3g}" if isinstance(x, float) and x == x else "" if x != x else str(x)

    table = pd.DataFrame(rows).set_index("what").astype(object).map(shown)
    print(
        f"linreg-sweep bench, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}: "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, G = {n} configs x 3 epochs; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; ratio: seconds / the reference "
        "row above it (seeds' loops, MLflow floor, plain app)"
    )
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string())
    if not args.skip_sweeps:
        e2e_stacked = next(
            float(r["seconds"])  # type: ignore[arg-type]
            for r in rows
            if r["what"] == "ours, stacked, G, default payload"
        )
        print(
            f"\nearlier targets: stacked training vs the seeds' loops {seeds / stacked_s:.0f}x "
            f"(>= 100x); end-to-end stacked sweep / (MLflow floor x {n} + stacked training) "
            f"{e2e_stacked / (floor * n + stacked_s):.2f} (<= 1.5)"
        )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process (training and tracking rows): {own:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
