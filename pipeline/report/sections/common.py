"""What several sections share."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

# The d2l chapter's setting (what `python -m pipeline` trains), less the key a section varies:
# sections select their runs by these params, so any sweep's matching runs count.
BASE: dict[str, Any] = {
    "loss": "mse",
    "reduction": "mean",
    "n": 1000,
    "epochs": 3,
    "outliers": 0.0,
    "init": "normal",
    "min_updates": 0,
}


def timed(fn: Callable[[], object], repeat: int = 5) -> float:
    """Best wall time of ``repeat`` calls (a closed-form computation, not a training run)."""
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
