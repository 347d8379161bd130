"""``python -m pipeline.runs [--sweep latest|<parent run id>]``: a sweep's run table.

Every job of the sweep with its grid, run name, outcome, whether it was cached, and its final
mse and w_error: the table the sweep logged to its parent run (``summary.csv``) when it ended.
A sweep prints only the counts per grid; this is the whole table, for ``make runs``.
"""

from __future__ import annotations

import argparse
import io

import pandas as pd

from pipeline import queries
from pipeline.context import StoreError, tracking_uri


def run_table(uri: str, sweep: str = "latest") -> pd.DataFrame:
    """The sweep's summary table; LookupError (one line) when there is no such sweep."""
    parent = queries.find_sweep(uri, sweep)
    if "summary.csv" not in queries.artifact_names(uri, parent.info.run_id):
        raise LookupError(f"sweep {parent.info.run_id} has no run table (it did not finish)")
    text = queries.artifact_text(uri, parent.info.run_id, "summary.csv")
    return pd.read_csv(io.StringIO(text)).drop(columns=["run_id"], errors="ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="latest", help="latest or a sweep's parent run id")
    args = parser.parse_args(argv)
    try:
        table = run_table(tracking_uri(), args.sweep)
    except (LookupError, StoreError) as exc:
        print(f"error: {exc}")
        return 2
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
