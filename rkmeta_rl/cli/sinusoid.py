"""``rkmeta-train-sinusoid`` / ``python scripts/train_sinusoid.py``: meta-train sinusoid regression with an RK
meta-gradient.

    rkmeta-train-sinusoid --method ralston                        # --config default: 70,000 iterations
    rkmeta-train-sinusoid --method midpoint --config paper        # the paper appendix's 100,000 iterations
    rkmeta-train-sinusoid --logdir runs/sinusoid-ralston-s0 --resume

Tasks: y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5], K = 10 points, MSE loss, a 1-40-40-1
ReLU network (MAML's setting; Adam 1e-3, meta-batch 25, alpha 0.01). The final evaluation adapts
``--eval-tasks`` fresh tasks with the method's own step and reports the query MSE after 0..``--test-inner-steps``
steps with 95% confidence intervals in ``metrics.json`` (printed as the last line); ``adaptation.png`` shows a
few tasks before and after adaptation. SIGTERM / SIGINT: checkpoint, exit 143 / 130; ``--resume`` continues
exactly.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from ..distributed import DistInfo
from ..presets import SINUSOID
from ..rk import method_slug
from ..supervised.config import MetaTrainConfig
from ..supervised.sinusoid_problem import SinusoidProblem
from ..supervised.trainer import MetaTrainer
from .flags import config_from_args
from .runner import Command, run_command
from .supervised import finish_supervised, make_supervised_parser

__all__ = ["main", "parse_args"]


def _parser() -> tuple[argparse.ArgumentParser, list[str]]:
    return make_supervised_parser(__doc__, MetaTrainConfig, SINUSOID, "default", SINUSOID["default"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parser()[0].parse_args(argv)


def _build(args: argparse.Namespace, config: MetaTrainConfig, dist: DistInfo, logdir: str) -> MetaTrainer:
    return MetaTrainer(SinusoidProblem(), config, logdir=logdir, resume=args.resume, verbose=args.verbose, dist=dist)


def _finish(args: argparse.Namespace, trainer: MetaTrainer) -> dict[str, Any]:
    res = trainer.final_evaluation()["mse"]
    steps = len(res["mean"]) - 1
    per_task = trainer.last_eval["mse"]  # [tasks, steps + 1]
    # adapting with a large alpha for more steps than trained can diverge on some tasks; say how often
    diverged = [float(((~np.isfinite(per_task[:, s])) | (per_task[:, s] > 1e3)).mean()) for s in range(steps + 1)]
    return finish_supervised(trainer, {
        "mse_0_steps": res["mean"][0], "mse_0_steps_ci95": res["ci95"][0],
        "mse_1_step": res["mean"][1], "mse_1_step_ci95": res["ci95"][1],
        f"mse_{steps}_steps": res["mean"][steps], f"mse_{steps}_steps_ci95": res["ci95"][steps],
        "mse_per_step": res["mean"], "eval_tasks": trainer.config.final_eval_tasks,
        # a task whose adaptation blew up to NaN counts as infinitely bad, not as missing
        f"mse_{steps}_steps_median": float(np.median(np.nan_to_num(per_task[:, steps], nan=np.inf))),
        "diverged_fraction_per_step": diverged,
        "wall_seconds_this_process": round(time.perf_counter() - args.wall_start, 2),
    }, "adaptation.png")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (under torchrun: this rank's part of a data-parallel run); returns the metrics."""
    parser, fields = _parser()
    return run_command(Command(
        algorithm="MetaTrainer",
        parser=parser, config=lambda a: config_from_args(SINUSOID[a.config], a, fields),
        logdir=lambda a, c: f"runs/sinusoid-{method_slug(c.method, c.adapt)}-s{c.seed}",
        build=_build, finish=_finish,
    ), argv)


if __name__ == "__main__":
    main()
