"""The meta-training loop shared by the RL scripts (``train_nav.py``, ``train_locomotion.py``).

Resume from a run directory, run MetaTRPO iterations with logging, a progress bar, a non-finite stop,
periodic atomic checkpoints and an optional time budget, and summarise the run for ``metrics.json``.
Everything here is collective under torchrun: every rank calls it, rank 0 alone writes.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..checkpoint import FINAL, LATEST, latest_checkpoint
from ..distributed import DistInfo, all_reduce_max
from .algorithm import MetaTRPO

__all__ = ["resume_run", "train_loop", "run_summary"]


def resume_run(logdir: str, model: MetaTRPO, keys: Sequence[str], dist: DistInfo, device: str,
               **load_kwargs: Any) -> tuple[MetaTRPO, list[dict[str, float]], float]:
    """Replace ``model`` by the one of ``logdir``'s latest checkpoint, refusing different settings.

    Args:
        logdir: run directory.
        model: the model this run would build from its flags (closed here).
        keys: constructor settings that must match the checkpoint's.
        dist: this process's place in the run.
        device, load_kwargs: for :meth:`MetaTRPO.load`.

    Returns:
        ``(model, history, elapsed)`` as saved by :func:`train_loop`.

    Raises:
        ValueError: no checkpoint, or a setting in ``keys`` differs (the message names it).
    """
    ckpt = latest_checkpoint(logdir)
    if ckpt is None:
        raise ValueError(f"--resume: no checkpoint in {logdir}")
    fresh = dict(model._init_kwargs)
    model.close()
    loaded = MetaTRPO.load(ckpt, device=device, dist=dist, **load_kwargs)
    for key in keys:
        if loaded._init_kwargs.get(key) != fresh.get(key):
            raise ValueError(f"--resume: the checkpoint was trained with {key}={loaded._init_kwargs.get(key)!r}, "
                             f"this run asks for {fresh.get(key)!r}")
    extra = MetaTRPO.load_extra(ckpt)
    return loaded, list(extra.get("history", [])), float(extra.get("elapsed", 0.0))


def train_loop(model: MetaTRPO, iterations: int, logdir: str, dist: DistInfo, history: list[dict[str, float]],
               elapsed: float, *, checkpoint_interval: int, progress: bool, desc: str,
               on_iteration: Callable[[int], None] | None = None, time_budget_min: float | None = None,
               checkpoint_extra: Mapping[str, Any] | None = None) -> tuple[float, bool]:
    """Run meta-iterations until ``iterations`` (or the time budget), then write the latest and final checkpoints.

    Each iteration: :meth:`MetaTRPO.train_iteration`, a stop with the iteration and the last good checkpoint
    on any non-finite statistic, the statistics recorded, ``on_iteration(it)`` (figures, videos), the elapsed
    time, the logger dumped, the progress bar, a checkpoint every ``checkpoint_interval``. ``history`` is
    extended in place. With a time budget, all ranks stop together once any is over it.

    Returns:
        ``(elapsed seconds, stopped by the time budget)``.
    """
    extra = dict(checkpoint_extra or {})

    def save(name: str) -> None:  # collective: every rank calls it, rank 0 writes
        model.save(os.path.join(logdir, name), extra={"history": history, "elapsed": elapsed, **extra})

    bar = tqdm(total=iterations, initial=model.num_iterations, disable=not progress or not dist.is_main,
               unit="it", desc=desc, dynamic_ncols=True)
    t_start = time.perf_counter() - elapsed
    stopped_by_budget = False
    try:
        while model.num_iterations < iterations:
            stats = model.train_iteration()
            it = model.num_iterations
            bad = [k for k, v in stats.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"non-finite {', '.join(bad)} at iteration {it}; last good checkpoint: "
                                         f"{latest_checkpoint(logdir) or 'none written'}")
            for k, v in stats.items():
                model.logger.record(k, v)
            if on_iteration is not None:
                on_iteration(it)
            elapsed = time.perf_counter() - t_start
            history.append({"iteration": it, "pre_return": stats["rollout/pre_return"],
                            "post_return": stats.get("rollout/post_return", float("nan")),
                            "kl": stats["train/kl"], "seconds": elapsed,
                            "sample_seconds": stats["time/sample_seconds"],
                            "update_seconds": stats["time/update_seconds"]})
            model.logger.record("time/elapsed_s", elapsed)
            model.logger.dump(step=it)
            bar.update(1)
            bar.set_postfix(pre=f"{stats['rollout/pre_return']:.1f}",
                            post=f"{stats.get('rollout/post_return', float('nan')):.1f}", refresh=False)
            if it % checkpoint_interval == 0:
                save(LATEST)
            if time_budget_min is not None:
                over = elapsed >= 60.0 * time_budget_min
                if dist.distributed:  # the ranks must stop together: any rank over its budget stops all
                    over = all_reduce_max([float(over)])[0] > 0
                if over:
                    stopped_by_budget = True
                    break
    finally:
        bar.close()
    save(LATEST)
    save(FINAL)
    return elapsed, stopped_by_budget


def run_summary(model: MetaTRPO, history: Sequence[Mapping[str, float]], elapsed: float, dist: DistInfo
                ) -> dict[str, Any]:
    """The ``metrics.json`` fields every RL script writes: pre/post-adaptation returns (means over the last 10
    iterations), timings, sizes, and the per-iteration return history."""
    last = history[-10:]

    def mean_last(key: str) -> float:
        return float(np.mean([h.get(key, np.nan) for h in last]))

    return {
        "method": model.tableau.name, "iterations": model.num_iterations,
        "adapt": None if model.meta_step.adapt_patterns is None else list(model.meta_step.adapt_patterns),
        "pre_return": mean_last("pre_return"), "post_return": mean_last("post_return"),
        "seconds": round(elapsed, 1), "seconds_per_iteration": round(elapsed / max(1, model.num_iterations), 3),
        "sample_seconds_per_iteration": round(mean_last("sample_seconds"), 3),
        "update_seconds_per_iteration": round(mean_last("update_seconds"), 3),
        "env_steps": model.num_timesteps, "inner_lr": model.inner_lr, "adapt_lr": model.alpha,
        "meta_batch_size": model.meta_batch_size, "fast_batch_size": model.fast_batch_size,
        "world_size": dist.world_size, "device": str(model.device),
        "history": {"pre_return": [h["pre_return"] for h in history],
                    "post_return": [h["post_return"] for h in history]},
    }
