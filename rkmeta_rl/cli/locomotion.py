"""``rkmeta-train-locomotion`` / ``python scripts/train_locomotion.py``: meta-train a locomotion task family
(or any task family) with RK-weighted MAML-TRPO.

    rkmeta-train-locomotion --env HalfCheetahVel --method ralston
    rkmeta-train-locomotion --env AntDir --method midpoint --horizon 100
    rkmeta-train-locomotion --env my/Pendulum-v0 --module my_package.my_envs   # your own family
    rkmeta-train-locomotion --env my_package.my_envs:my/Pendulum-v0            # the same, as gym.make takes it
    rkmeta-train-locomotion --env HalfCheetahVel --logdir runs/cheetah-vel --resume

Defaults (``--config maml``) are the MAML paper's locomotion setting (Finn, Abbeel and Levine, 2017): 2x100 ReLU
policy, inner learning rate 0.1, meta-batch 40 tasks x 20 trajectories, horizon 200 (``--horizon 100`` gives
the reference PyTorch code's), TRPO max KL 0.01, 500 meta-iterations. Any flag overrides.

``--env`` takes a built-in family name (HalfCheetahVel, HalfCheetahDir, AntVel, AntDir, AntGoal), any
registered Gymnasium id, or ``module:Id``. ``--module`` (repeatable) imports a module first, so that its
``gymnasium.register`` call runs. A family of your own is checked against the task-family protocol and
Gymnasium's ``check_env`` before any training; its action space must be a Box.

Sampling: every task x trajectory env is stepped together in this process, one policy forward per time step;
``--num-workers k`` spreads the envs over k processes (results are the same). Every ``--video-interval``
iterations TensorBoard gets animated rollouts of ``--video-tasks`` fixed tasks before and after one inner step
(own random streams: ``--resume`` still continues exactly). Data parallel under torchrun as ``rkmeta-train-nav``;
``--device cuda`` puts the policy and the meta-update on the GPU while MuJoCo steps on the CPU.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from .. import video as rk_video  # sets MUJOCO_GL for offscreen rendering before mujoco is imported
from ..envs.locomotion import LOCOMOTION_IDS
from ..presets import LOCOMOTION
from ..rk import method_slug
from ..rl.algorithm import MetaTRPO
from ..rl.config import MetaTRPOConfig
from ..utils import check_positive
from .rl import build_metatrpo, finish_metatrpo, make_rl_parser, rl_config
from .runner import Command, run_command

__all__ = ["main", "parse_args", "resolve_env", "import_modules", "VideoCallback"]

_log = logging.getLogger("rkmeta_rl.cli.locomotion")


def _parser() -> tuple[argparse.ArgumentParser, list[str]]:
    p, fields = make_rl_parser(__doc__, LOCOMOTION, "maml")
    p.add_argument("--module", action="append", default=[],
                   help="import this module first (the one whose gymnasium.register call registers --env); "
                        "repeatable")
    g = p.add_argument_group("videos")
    g.add_argument("--video-interval", type=int, default=25, help="iterations between videos (0: none; "
                   "default: %(default)s)")
    g.add_argument("--video-tasks", type=int, default=3, help="tasks shown side by side (default: %(default)s)")
    g.add_argument("--video-every", type=int, default=2, help="render every k-th step (default: %(default)s)")
    g.add_argument("--video-horizon", type=int, default=None, help="steps per video (default: the horizon)")
    g.add_argument("--video-size", default="160x120", help="frame size WxH per task (default: %(default)s)")
    return p, fields


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parser()[0].parse_args(argv)


def import_modules(names: list[str]) -> None:
    """Import every ``--module`` (their ``gymnasium.register`` calls run), from the current directory too, as
    ``python -m`` would (``python scripts/train_locomotion.py`` puts only ``scripts/`` on the path)."""
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:
            raise ValueError(f"--module {name}: cannot import it ({type(err).__name__}: {err}); it must be "
                             f"importable from here (in the current directory, installed, or on PYTHONPATH)") from err


def resolve_env(name: str) -> str:
    """A family name, a registered id or ``module:Id`` -> the registered id; a clear error (with the
    ``--module`` hint) otherwise."""
    import gymnasium as gym

    if ":" in name:
        module, name = name.split(":", 1)
        import_modules([module])
    if name in LOCOMOTION_IDS:
        return LOCOMOTION_IDS[name]
    if name in gym.registry:
        return name
    close = difflib.get_close_matches(name, [*LOCOMOTION_IDS, *gym.registry.keys()], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"--env {name!r} is not a built-in family ({', '.join(LOCOMOTION_IDS)}) nor a registered "
                     f"Gymnasium id.{hint} For a family of your own, pass --module your_package.your_envs (the "
                     f"module whose gymnasium.register call registers {name!r}), or --env module:Id.")


def family_name(env_id: str) -> str:
    return env_id.split("/")[-1].rsplit("-v", 1)[0]


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--video-size must look like 160x120, got {text!r}") from None
    check_positive("video width", w, integer=True)
    check_positive("video height", h, integer=True)
    return w, h


def _config(args: argparse.Namespace) -> MetaTRPOConfig:
    """Check the video flags, import ``--module``s, resolve ``--env``: all before any work."""
    check_positive("--video-interval", args.video_interval, integer=True, allow_zero=True)
    check_positive("--video-tasks", args.video_tasks, integer=True)
    check_positive("--video-every", args.video_every, integer=True)
    if args.video_horizon is not None:
        check_positive("--video-horizon", args.video_horizon, integer=True)
    parse_size(args.video_size)
    import_modules(args.module)
    env = resolve_env(args.env) if args.env is not None else LOCOMOTION[args.config].env
    return rl_config(LOCOMOTION, args, _parser()[1], env=env)


def _mean_fn(model: MetaTRPO, params: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    dtype = model.policy.log_std.dtype

    def fn(obs: torch.Tensor) -> torch.Tensor:
        return model.policy.mean(params, obs.to(device=model.device, dtype=dtype))

    return fn


class VideoCallback(BaseCallback):
    """Every ``interval`` iterations (and the first) render the mean policy on fixed tasks before and after one
    inner step as TensorBoard GIFs (rank 0). Training's random streams are untouched: adaptation samples with
    its own generator, the sampler's env-seed stream is saved and restored around it, rendering resets its own
    env instances with fixed seeds."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.enabled = args.video_interval > 0
        self.tasks: list[Any] = []

    def _on_training_start(self) -> None:
        model: MetaTRPO = self.model  # type: ignore[assignment]
        base = model.env.unwrapped
        self.enabled = self.enabled and model.is_main
        if self.enabled and not (model.env_id is not None and hasattr(base, "model") and hasattr(base, "data")):
            _log.warning("%s is not a MuJoCo env: no videos", model.env_id)
            self.enabled = False
        if self.enabled:
            self.tasks = model.sampler.sample_tasks(self.args.video_tasks,
                                                    np.random.default_rng(10_000 + model.config.seed))

    def _on_step(self) -> bool:
        it = self.model.num_iterations
        if self.enabled and (it % self.args.video_interval == 0 or it == 1):
            self.logger.record("time/video_seconds", self._render(it))
        return True

    def _render(self, it: int) -> float:
        model: MetaTRPO = self.model  # type: ignore[assignment]
        args = self.args
        t0 = time.perf_counter()
        width, height = parse_size(args.video_size)
        params = {k: v.detach() for k, v in model.policy.params().items()}
        state = model.rng_state()
        try:
            gen = torch.Generator(device=model.device).manual_seed(30_000 + it)
            eps = model.sample_episodes(self.tasks, params, gen)
            adapted = model.meta_step.adapt(params, [eps.flat()])
        finally:
            model.set_rng_state(state)
        fps = 1.0 / (model.env.unwrapped.dt * args.video_every) if hasattr(model.env.unwrapped, "dt") else 20.0
        stages = (("pre_adaptation", [_mean_fn(model, params)] * len(self.tasks)),
                  ("post_adaptation", [_mean_fn(model, {k: v[i] for k, v in adapted.items()})
                                       for i in range(len(self.tasks))]))
        for name, fns in stages:
            frames = rk_video.render_task_rollouts(model.env_id, self.tasks, fns,
                                                   horizon=args.video_horizon or model.sampler.horizon,
                                                   width=width, height=height, seed=40_000, every=args.video_every)
            rk_video.log_rollout_video(self.logger, f"video/{name}", frames, step=it, fps=fps)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (under torchrun: this rank's part of a data-parallel run); returns the metrics."""
    parser, _ = _parser()
    return run_command(Command(
        algorithm="MetaTRPO",
        parser=parser, config=_config,
        logdir=lambda a, c: f"runs/{family_name(str(c.env))}-{method_slug(c.method, c.adapt)}-s{c.seed}",
        build=build_metatrpo, callbacks=lambda a, m: VideoCallback(a),
        finish=lambda a, m: finish_metatrpo(a, m),
    ), argv)


if __name__ == "__main__":
    main()
