"""Newton vs SGD: Why first-order methods and not Newton?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from pipeline.data import make_generators, with_bias_column
from pipeline.report.data import Section, SweepData, need
from pipeline.report.sections.common import BASE, timed
from pipeline.train import init_params, make_problem

SPEC = ("newton", "Newton vs SGD", "Why first-order methods and not Newton?", "smoke")


def build(d: SweepData, s: Section, out: Path) -> None:
    rows = d.select(**BASE, lr_scaling="none", engine=["scratch", "linear"])
    rows = need(rows[~rows["diverged"]])
    default = rows[(rows["lr"] == 0.03) & (rows["B"] == 10)]  # d2l's settings, if swept
    run = default.iloc[0] if not default.empty else rows.loc[rows["w_error"].idxmin()]
    cfg = d.config(run["run_id"])
    p = make_problem(cfg, make_generators(cfg.seed))
    w0, b0 = init_params(cfg, len(p.true_w), make_generators(cfg.seed).init)
    A = with_bias_column(p.X)
    theta0 = torch.cat([w0, b0.reshape(1)])

    def newton() -> torch.Tensor:
        g = 2 / len(A) * A.T @ (A @ theta0 - p.y.reshape(-1))
        H = 2 / len(A) * A.T @ A
        return theta0 - torch.linalg.solve(H, g)

    t_newton = timed(newton)
    theta = newton()
    t_sgd = float(run["train_time_s"])  # logged by the run: the report trains nothing
    w_err = float(torch.linalg.vector_norm(theta[:-1] - p.true_w))
    s.numbers = {
        "newton_w_error": w_err,
        "sgd_w_error": float(run["w_error"]),
        "newton_s": t_newton,
        "sgd_s": t_sgd,
    }
    s.table = pd.DataFrame(
        {
            "method": ["one Newton step", f"SGD ({run['tags.mlflow.runName']})"],
            "w_error": [w_err, float(run["w_error"])],
            "seconds": [t_newton, t_sgd],
        }
    )
    d_ = A.shape[1]
    s.answer = (
        f"For this quadratic, one Newton step from the initial weights lands on the least "
        f"squares solution: w_error {w_err:.3g} against SGD's {run['w_error']:.3g}, in "
        f"{t_newton * 1e3:.2g} ms against {t_sgd * 1e3:.3g} ms. That is the exception: Newton "
        f"needs the d×d Hessian (here d = {d_}; for a network d is millions, so O(d²) memory and "
        f"O(d³) solves), the loss of a real model is not quadratic, and, as the FAQ says, "
        f"we care about where the optimiser ends up more than how fast."
    )
