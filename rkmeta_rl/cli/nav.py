"""``rkmeta-train-nav`` / ``python scripts/train_nav.py``: meta-train 2D navigation with RK-weighted MAML-TRPO
(Im et al., 2019; Finn et al., 2017).

    rkmeta-train-nav --method ralston                       # the seed paper's setting (--config seed)
    rkmeta-train-nav --method midpoint --config reference   # the reference MAML-RL code's setting
    rkmeta-train-nav --logdir runs/nav-ralston-seed-s0 --resume

Settings (``--config``, :data:`rkmeta_rl.presets.NAV`):
  seed       2x100 ReLU policy, inner lr 0.16, 40 tasks x 20 trajectories, horizon 100, 100 iterations (= paper)
  reference  2x64 tanh policy,  inner lr 0.1,  20 tasks x 20 trajectories, horizon 100, 500 iterations
Any flag given explicitly overrides the preset.

The run folder gets TensorBoard events (``rollout/`` pre/post-adaptation returns, ``train/`` KL, surrogate
improvement, line-search steps, CG residual, ``time/`` env steps and timings, every ``--figure-interval``
iterations a figure of trajectories before and after adaptation, and the settings with the final returns in
the HParams tab), ``progress.csv``, ``config.json``, verified checkpoints (``--resume`` continues exactly) and
``metrics.json`` (printed as the last line). SIGTERM / SIGINT: checkpoint, exit 143 / 130.

Data parallel::

    torchrun --standalone --nproc_per_node=2 scripts/train_nav.py --method ralston --device cpu

each process samples its share of the meta-batch; TRPO's gradient, Fisher-vector products and line-search
values are averaged over the processes, so every process takes the same step. Rank 0 alone logs and writes.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Figure

from ..presets import NAV
from ..rk import method_slug
from ..rl.algorithm import MetaTRPO
from ..rl.config import MetaTRPOConfig
from ..rl.evaluation import trajectory_figure
from .rl import build_metatrpo, finish_metatrpo, make_rl_parser, rl_config
from .runner import Command, run_command

__all__ = ["main", "parse_args", "TrajectoryFigureCallback"]

ENV_ID = "rkmeta/Navigation2D-v0"


class TrajectoryFigureCallback(BaseCallback):
    """Every ``interval`` iterations (and the first) record a figure of paths before and after adaptation on
    three fixed tasks (own random streams: training's are untouched). Rank 0 only."""

    def __init__(self, interval: int, seed: int) -> None:
        super().__init__()
        self.interval, self.seed = int(interval), int(seed)
        self.tasks: list[Any] = []

    def _on_training_start(self) -> None:
        self.tasks = self.model.sampler.sample_tasks(3, np.random.default_rng(10_000 + self.seed))

    def _on_step(self) -> bool:
        model: MetaTRPO = self.model  # type: ignore[assignment]
        it = model.num_iterations
        if model.is_main and self.interval and (it % self.interval == 0 or it == 1):
            fig = trajectory_figure(model.sampler, model.meta_step, model.policy.params(), self.tasks,
                                    torch.Generator(device=model.device).manual_seed(20_000 + it),
                                    title=f"iteration {it}")
            self.logger.record("rollout/trajectories", Figure(fig, close=True), exclude=("stdout", "csv"))
        return True


def _parser() -> tuple[argparse.ArgumentParser, list[str]]:
    p, fields = make_rl_parser(__doc__, NAV, "seed", skip=("env",))
    p.add_argument("--figure-interval", type=int, default=10,
                   help="iterations between trajectory figures (0: none; default: %(default)s)")
    return p, fields


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parser()[0].parse_args(argv)


def _config(args: argparse.Namespace) -> MetaTRPOConfig:
    if args.figure_interval < 0:
        raise ValueError(f"figure_interval must be >= 0, got {args.figure_interval}")
    return rl_config(NAV, args, _parser()[1], env=ENV_ID)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (under torchrun: this rank's part of a data-parallel run); returns the metrics."""
    parser, _ = _parser()
    return run_command(Command(
        algorithm="MetaTRPO",
        parser=parser, config=_config,
        logdir=lambda a, c: f"runs/nav-{method_slug(c.method, c.adapt)}-{a.config}-s{c.seed}",
        build=build_metatrpo,
        callbacks=lambda a, m: TrajectoryFigureCallback(a.figure_interval, m.config.seed),
        finish=lambda a, m: finish_metatrpo(a, m, config=a.config),
    ), argv)


if __name__ == "__main__":
    main()
