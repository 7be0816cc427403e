"""Meta-training loop shared by the supervised benchmarks (sinusoid, Omniglot, MiniImagenet).

Data flows one way (DESIGN.md section 5): the config becomes a trainer; the trainer asks the problem for a
task batch, hands the losses to the RK engine (:func:`rkmeta_rl.rk.meta_gradient`), gets one meta-gradient
and gives it to Adam; the logger (SB3's) and the atomic checkpointer watch from the side.

Data parallel (issue 6): launched with ``torchrun`` (see :mod:`rkmeta_rl.distributed`), each of the
``world_size`` ranks samples its share of the meta-batch (:func:`~rkmeta_rl.distributed.split_batch`) from its
own task stream (seeded with :func:`~rkmeta_rl.distributed.rank_seed`), computes the meta-gradient of those
tasks, and one ``all_reduce`` averages the gradients (and the logged statistics) weighted by the ranks' task
counts, so the average is the mean over the whole meta-batch; every rank then takes the same Adam step.
Evaluation is split across ranks (each adapts its slice of the same tasks; results equal a one-process run).
Rank 0 alone logs and writes checkpoints and ``metrics.json``; the checkpoint holds every rank's task-stream
state, so ``--resume`` with the same number of processes is exact.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np
import torch
from stable_baselines3.common.logger import Figure, Logger
from tqdm.auto import tqdm

from rkmeta_rl.checkpoint import FINAL, LATEST, latest_checkpoint, load_checkpoint, save_checkpoint
from rkmeta_rl.distributed import (DistInfo, all_gather_objects, all_reduce_max, all_reduce_mean, batch_slice,
                                   broadcast_params, current_dist, rank_seed, split_batch)
from rkmeta_rl.logger import make_logger
from rkmeta_rl.rk import (LossFn, Params, PerStage, StepSizes, adapt_and_score, meta_gradient, parse_adapt,
                          parse_method_spec, resolve_groups)
from rkmeta_rl.utils import check_positive, get_device, mean_ci95, set_threads, write_json_atomic

__all__ = ["MetaTrainConfig", "MetaProblem", "MetaTrainer", "NonFiniteError"]


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class MetaTrainConfig:
    """Settings of a supervised meta-training run (defaults: the sinusoid benchmark, DESIGN.md section 4).

    Attributes:
        method: RK method (tableau name or generic x > 0), or per-parameter methods
            ``"glob=method,..."`` (first match wins, e.g. ``"fc.*=midpoint,*=ralston"``).
        adapt: parameters the inner loop moves (comma-separated globs; None: all; ANIL: ``"fc.*"``).
        iterations: meta-iterations (outer Adam steps).
        meta_batch_size: tasks per meta-iteration.
        inner_lr: MAML's inner rate alpha_MAML (see ``step_rule``).
        inner_steps: inner gradient steps during meta-training.
        test_inner_steps: inner steps scored at evaluation (metrics after 1..this many steps are kept).
        step_rule: ``"tableau"`` (alpha = 2 q21 inner_lr) or ``"fixed"`` (alpha = inner_lr for all methods).
        first_order: drop second-order terms.
        meta_lr: Adam learning rate.
        seed: seeds initialisation, the task stream and evaluation tasks.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        path: engine execution path: ``"auto"``, ``"vmap"`` or ``"loop"``.
        compile: ``torch.compile`` the vectorised meta-gradient (falls back to eager with a warning).
        log_interval: iterations between logger dumps.
        eval_interval: iterations between evaluations during training (0: never).
        eval_tasks: tasks per evaluation during training.
        final_eval_tasks: tasks of the final evaluation.
        checkpoint_interval: iterations between checkpoints.
        time_budget_min: stop training cleanly after this many minutes, then evaluate (None: no budget).
        threads: torch intra-op threads (1 recommended).
        eval_chunk: tasks adapted at once at evaluation (memory bound).
    """

    method: str = "midpoint"
    adapt: Optional[str] = None
    iterations: int = 70_000
    meta_batch_size: int = 25
    inner_lr: float = 0.01
    inner_steps: int = 1
    test_inner_steps: int = 10
    step_rule: str = "tableau"
    first_order: bool = False
    meta_lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    path: str = "auto"
    compile: bool = False
    log_interval: int = 100
    eval_interval: int = 5000
    eval_tasks: int = 100
    final_eval_tasks: int = 600
    checkpoint_interval: int = 2000
    time_budget_min: Optional[float] = None
    threads: int = 1
    eval_chunk: Optional[int] = None

    def validate(self) -> None:
        """Fail before any work with a message naming the bad setting."""
        parse_method_spec(self.method)
        parse_adapt(self.adapt)
        check_positive("iterations", self.iterations, integer=True)
        check_positive("meta_batch_size", self.meta_batch_size, integer=True)
        check_positive("inner_lr", self.inner_lr)
        check_positive("inner_steps", self.inner_steps, integer=True)
        check_positive("test_inner_steps", self.test_inner_steps, integer=True)
        check_positive("meta_lr", self.meta_lr)
        check_positive("log_interval", self.log_interval, integer=True)
        check_positive("eval_interval", self.eval_interval, integer=True, allow_zero=True)
        check_positive("eval_tasks", self.eval_tasks, integer=True)
        check_positive("final_eval_tasks", self.final_eval_tasks, integer=True, allow_zero=True)
        check_positive("checkpoint_interval", self.checkpoint_interval, integer=True)
        check_positive("threads", self.threads, integer=True)
        if self.time_budget_min is not None:
            check_positive("time_budget_min", self.time_budget_min)
        if self.step_rule not in ("tableau", "fixed"):
            raise ValueError(f"step_rule must be 'tableau' or 'fixed', got {self.step_rule!r}")
        if self.path not in ("auto", "vmap", "loop"):
            raise ValueError(f"path must be 'auto', 'vmap' or 'loop', got {self.path!r}")
        get_device(self.device)

    @property
    def adapt_lr(self) -> float:
        """The method's own inner learning rate (used in training and at test time); one method for every
        parameter only (per-parameter rates: :attr:`MetaTrainer.adapt_lr`)."""
        tab = parse_method_spec(self.method)
        if not hasattr(tab, "inner_lr") or self.adapt is not None:
            raise ValueError("per-parameter methods or adapt= have per-parameter rates: use MetaTrainer.adapt_lr")
        return tab.inner_lr(self.inner_lr, self.step_rule)


class MetaProblem(Protocol):
    """What a supervised benchmark gives the trainer."""

    name: str
    #: key of ``metric_fn``'s output that summarises a run (e.g. ``"mse"``, ``"acc"``)
    primary_metric: str
    support_loss: LossFn
    query_loss: LossFn

    def init_params(self, generator: torch.Generator, device: torch.device) -> Params:
        """Fresh meta-parameters."""

    def sample_tasks(self, num_tasks: int, generator: torch.Generator, stages: int, device: torch.device,
                     split: str = "train") -> Any:
        """A task batch for the engine (``split`` is ``"train"``, ``"val"`` or ``"test"``)."""

    def metric_fn(self, params: Mapping[str, torch.Tensor], data: Any) -> dict[str, torch.Tensor]:
        """Scalar metrics of one task (query set)."""

    def figure(self, params: Params, adapt_lr: StepSizes, steps: int, generator: torch.Generator,
               device: torch.device) -> Any:
        """A matplotlib figure for TensorBoard, or None."""


Callback = Callable[["MetaTrainer", int, Mapping[str, float]], Optional[bool]]


class MetaTrainer:
    """Meta-trains ``problem`` with the RK meta-gradient and Adam, with logging, checkpoints and resume.

    Args:
        problem: the benchmark.
        config: run settings (validated here).
        logdir: run directory (checkpoints, ``progress.csv``, TensorBoard events, ``metrics.json``);
            ``None`` keeps nothing on disk.
        resume: continue from ``logdir``'s latest checkpoint (error if there is none). Under torchrun every
            rank loads it (``logdir`` must be visible to all ranks).
        verbose: print the logger's table to stdout.
        dist: this process's place in the data-parallel group (default: the initialised process group, if
            any, see :func:`rkmeta_rl.distributed.init_distributed`; else one process). With
            ``world_size > 1`` the constructor, :meth:`step`, :meth:`save`, :meth:`evaluate`, :meth:`learn`
            and :meth:`final_evaluation` are collective: every rank must call them in the same order.
    """

    def __init__(self, problem: MetaProblem, config: MetaTrainConfig, logdir: str | None = None,
                 resume: bool = False, verbose: bool = False, dist: DistInfo | None = None) -> None:
        config.validate()
        self.dist: DistInfo = dist if dist is not None else current_dist()
        #: tasks this rank draws per meta-iteration (the whole meta-batch without data parallelism)
        self.local_batch_size = split_batch(config.meta_batch_size, self.dist.rank, self.dist.world_size)
        set_threads(config.threads)
        self.problem = problem
        self.config = config
        self.logdir = logdir
        self.device = get_device(config.device)
        self.method_spec = parse_method_spec(config.method)
        self.iteration = 0
        self.elapsed = 0.0
        self._compile = config.compile
        init_gen = torch.Generator().manual_seed(config.seed)
        self.params: Params = {k: v.to(self.device) for k, v in problem.init_params(init_gen, self.device).items()}
        self.groups = resolve_groups(list(self.params), self.method_spec, config.adapt)
        rates = self.groups.step_sizes(config.inner_lr, config.step_rule)
        #: the inner step sizes, in training and at test time: one float, or ``{name: alpha_l}``
        self.adapt_lr: StepSizes = rates if len(set(rates.values())) > 1 else next(iter(rates.values()))
        # every rank initialises from the same seed; the broadcast guards against any divergence
        broadcast_params(self.params, src=0)
        self._leaves = [p.requires_grad_(True) for p in self.params.values()]
        self.optimizer = torch.optim.Adam(self._leaves, lr=config.meta_lr)
        # the task stream has its own generator so evaluation never perturbs training (exact resume); each
        # rank has its own stream (rank 0's is the one-process stream)
        self.task_gen = torch.Generator().manual_seed(rank_seed(config.seed + 1, self.dist.rank))
        if resume:
            if logdir is None:
                raise ValueError("resume needs a logdir")
            ckpt = latest_checkpoint(logdir)
            if ckpt is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {logdir}")
            self._restore(load_checkpoint(ckpt, map_location=self.device))
        # only rank 0 logs; the other ranks get a logger that writes nowhere
        self.logger: Logger = make_logger(logdir if self.dist.is_main else None, resume=resume, verbose=verbose)

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0; always true without data parallelism)."""
        return self.dist.is_main

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: parameters, Adam, task-stream RNGs, counters, config.

        Collective under data parallelism: the ranks' task-stream states are gathered (``task_gens``, in rank
        order; ``task_gen`` is rank 0's, as in one-process checkpoints)."""
        gens = all_gather_objects(self.task_gen.get_state())
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "task_gen": gens[0],
            "task_gens": gens,
            "world_size": self.dist.world_size,
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "config": asdict(self.config),
            "problem": self.problem.name,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        saved = state.get("config", {})
        for key in ("method", "adapt", "meta_batch_size", "inner_lr", "inner_steps", "step_rule", "first_order",
                    "seed"):
            if key in saved and saved[key] != getattr(self.config, key):
                raise ValueError(f"--resume: the checkpoint was trained with {key}={saved[key]!r}, "
                                 f"but this run asks for {getattr(self.config, key)!r}")
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v.to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        gens = state.get("task_gens", [state["task_gen"]])
        saved_world = int(state.get("world_size", len(gens)))
        if saved_world != self.dist.world_size:
            warnings.warn(f"--resume: the checkpoint was written by {saved_world} process(es), this run has "
                          f"{self.dist.world_size}; parameters and Adam continue, but the task streams of ranks "
                          "without a saved state are reseeded, so the run is not an exact continuation",
                          RuntimeWarning, stacklevel=3)
        if self.dist.rank < len(gens):
            self.task_gen.set_state(gens[self.dist.rank])
        else:  # deterministic from (seed, rank, iteration)
            self.task_gen.manual_seed(rank_seed(self.config.seed + 1 + int(state["iteration"]), self.dist.rank))
        self.iteration = int(state["iteration"])
        self.elapsed = float(state.get("elapsed", 0.0))

    def save(self, name: str = LATEST) -> str | None:
        """Atomically write the checkpoint ``name`` into the run directory (rank 0 writes; collective under
        data parallelism). Returns the path on rank 0, else ``None``."""
        if self.logdir is None:
            return None
        state = self.state_dict()
        if not self.is_main:
            return None
        return save_checkpoint(os.path.join(self.logdir, name), state)

    # ------------------------------------------------------------------ one step
    def _meta_gradient(self, data: Any) -> tuple[Params, dict[str, float]]:
        c = self.config
        kwargs = dict(method=self.method_spec, adapt=c.adapt, inner_lr=c.inner_lr, inner_steps=c.inner_steps,
                      step_rule=c.step_rule, first_order=c.first_order, path=c.path)
        if self._compile:
            try:
                return meta_gradient(self.params, self.problem.support_loss, self.problem.query_loss, data,
                                     compile=True, **kwargs)
            except Exception as err:  # noqa: BLE001 - any compiler failure falls back to the eager program
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); using the eager path",
                              RuntimeWarning, stacklevel=2)
                self._compile = False
        return meta_gradient(self.params, self.problem.support_loss, self.problem.query_loss, data, **kwargs)

    def step(self) -> dict[str, float]:
        """One meta-iteration: sample tasks, RK meta-gradient, Adam step. Raises :class:`NonFiniteError`.

        Under data parallelism this rank samples ``local_batch_size`` tasks, and the meta-gradients and
        statistics are averaged over the ranks weighted by their task counts (one ``all_reduce``): the result
        is the mean over the whole meta-batch, and every rank takes the same Adam step."""
        c = self.config
        data = self.problem.sample_tasks(self.local_batch_size, self.task_gen, self.groups.stages, self.device)
        grads, stats = self._meta_gradient(data)
        if self.dist.distributed:
            keys = sorted(k for k in stats if k != "num_tasks")
            local = list(grads.values()) + [torch.tensor([stats[k] for k in keys], dtype=torch.float64)]
            reduced = all_reduce_mean(local, weight=self.local_batch_size)
            grads = dict(zip(grads.keys(), reduced[:-1]))
            stats = {k: float(v) for k, v in zip(keys, reduced[-1])}
            stats["num_tasks"] = float(c.meta_batch_size)
        gnorm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])))
        stats["grad_norm"] = gnorm
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            last = latest_checkpoint(self.logdir) if self.logdir else None
            raise NonFiniteError(f"non-finite {', '.join(bad)} at iteration {self.iteration + 1}; "
                                 f"last good checkpoint: {last or 'none written'}")
        for p, g in zip(self._leaves, grads.values()):
            p.grad = g
        self.optimizer.step()
        self.iteration += 1
        return stats

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, num_tasks: int, seed: int, split: str = "test", steps: int | None = None
                 ) -> dict[str, np.ndarray]:
        """Adapt ``num_tasks`` fresh tasks with the method's own alpha and score after 0..``steps`` steps.

        Under data parallelism (collective) every rank draws the same tasks and adapts its contiguous slice of
        each chunk; the per-task results are gathered, so every rank returns what one process would.

        Returns:
            ``{metric: array [num_tasks, steps + 1]}``.
        """
        steps = self.config.test_inner_steps if steps is None else steps
        gen = torch.Generator().manual_seed(seed)
        chunk = self.config.eval_chunk or num_tasks
        rank, world = self.dist.rank, self.dist.world_size
        parts: list[dict[str, np.ndarray] | None] = []
        done = 0
        while done < num_tasks:
            n = min(chunk, num_tasks - done)
            data = self.problem.sample_tasks(n, gen, 2, self.device, split=split)
            sl = batch_slice(n, rank, world, allow_empty=True)
            if sl.stop > sl.start:
                mine = data if world == 1 else _slice_tasks(data, sl)
                res = adapt_and_score(self.params, self.problem.support_loss, self.problem.metric_fn, mine,
                                      self.adapt_lr, steps, path=self.config.path)
                parts.append({k: v.detach().cpu().numpy() for k, v in res.items()})
            else:
                parts.append(None)
            done += n
        if world > 1:
            per_rank = all_gather_objects(parts)  # [rank][chunk]
            parts = [p for i in range(len(parts)) for r in range(world) if (p := per_rank[r][i]) is not None]
        kept = [p for p in parts if p is not None]
        return {k: np.concatenate([p[k] for p in kept]) for k in kept[0]}

    def _log_eval(self, split: str, res: Mapping[str, np.ndarray]) -> None:
        for key, arr in res.items():
            for s in sorted({1, arr.shape[1] - 1}):
                self.logger.record(f"{split}/{key}_{s}_step{'s' if s > 1 else ''}", float(arr[:, s].mean()))
            self.logger.record(f"{split}/{key}_0_steps", float(arr[:, 0].mean()))

    # ------------------------------------------------------------------ training
    def learn(self, callback: Callback | None = None, progress_bar: bool = True) -> "MetaTrainer":
        """Train until ``config.iterations`` (or the time budget), checkpointing and logging on the way."""
        c = self.config
        start_wall = time.perf_counter() - self.elapsed
        budget = None if c.time_budget_min is None else c.time_budget_min * 60.0
        acc: dict[str, float] = {}
        n_acc = 0
        t_log = time.perf_counter()
        it_log = self.iteration
        bar = tqdm(total=c.iterations, initial=self.iteration, disable=not (progress_bar and self.is_main),
                   desc=c.method, unit="it", mininterval=1.0, dynamic_ncols=True)
        self.stopped_by_budget = False
        try:
            while self.iteration < c.iterations:
                stats = self.step()
                bar.update(1)
                for k, v in stats.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                it = self.iteration
                self.elapsed = time.perf_counter() - start_wall
                if it % c.log_interval == 0 or it == c.iterations:
                    now = time.perf_counter()
                    for k, v in acc.items():
                        if k != "num_tasks":
                            self.logger.record(f"train/{k}", v / n_acc)
                    self.logger.record("time/iterations", it)
                    self.logger.record("time/elapsed_s", self.elapsed)
                    self.logger.record("time/it_per_s", (it - it_log) / max(now - t_log, 1e-9))
                    bar.set_postfix(loss=f"{acc.get('query_loss_post', float('nan')) / n_acc:.4g}", refresh=False)
                    acc, n_acc, t_log, it_log = {}, 0, now, it
                    if c.eval_interval and it % c.eval_interval == 0:
                        self._log_eval("eval", self.evaluate(c.eval_tasks, seed=c.seed + 10_000, split="val"))
                        fig = None if not self.is_main else self.problem.figure(
                            self.params, self.adapt_lr, c.test_inner_steps,
                            torch.Generator().manual_seed(c.seed + 20_000), self.device)
                        if fig is not None:
                            self.logger.record("eval/figure", Figure(fig, close=True), exclude=("stdout", "csv"))
                    self.logger.dump(it)
                if it % c.checkpoint_interval == 0:
                    self.save(LATEST)
                stop_cb = callback is not None and callback(self, it, stats) is False
                over = budget is not None and self.elapsed >= budget
                if self.dist.distributed and (callback is not None or budget is not None):
                    # the ranks must stop together: any rank's stop request stops all
                    stop_cb, over = (v > 0 for v in all_reduce_max([float(stop_cb), float(over)]))
                if stop_cb:
                    break
                if over:
                    self.stopped_by_budget = True
                    break
        finally:
            bar.close()
        self.save(LATEST)
        self.save(FINAL)
        return self

    def final_evaluation(self) -> dict[str, Any]:
        """Evaluate on ``final_eval_tasks`` fresh test tasks; returns per-step means and 95% CIs.

        The per-task values (``{metric: [tasks, steps + 1]}``) are kept in ``self.last_eval``."""
        c = self.config
        res = self.evaluate(c.final_eval_tasks, seed=c.seed + 30_000, split="test")
        self.last_eval = res
        out: dict[str, Any] = {}
        for key, arr in res.items():
            means, cis = zip(*(mean_ci95(arr[:, s]) for s in range(arr.shape[1])))
            out[key] = {"mean": list(means), "ci95": list(cis)}
        self._log_eval("test", res)
        self.logger.dump(self.iteration)
        return out

    def write_metrics(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``<logdir>/metrics.json`` with the run's settings, ``seconds`` and ``extra``."""
        c = self.config
        metrics = {"method": c.method, "adapt": c.adapt, "iterations": self.iteration,
                   "seconds": round(self.elapsed, 2),
                   "meta_batch_size": c.meta_batch_size, "inner_lr": c.inner_lr, "adapt_lr": self.adapt_lr,
                   "step_rule": c.step_rule, "first_order": c.first_order, "seed": c.seed,
                   "problem": self.problem.name, "stopped_by_time_budget": getattr(self, "stopped_by_budget", False)}
        metrics.update(extra)
        if self.dist.distributed:
            metrics["world_size"] = self.dist.world_size
        if self.logdir is not None and self.is_main:
            write_json_atomic(os.path.join(self.logdir, "metrics.json"), metrics)
        return metrics

    def close(self) -> None:
        """Close the logger's files."""
        self.logger.close()


def _slice_tasks(data: Any, sl: slice) -> Any:
    """Tasks ``sl`` of a task batch (every tensor leaf is indexed by task along its first dimension)."""
    if isinstance(data, PerStage):
        return PerStage([_slice_tasks(d, sl) for d in data])
    return torch.utils._pytree.tree_map(lambda t: t[sl] if isinstance(t, torch.Tensor) else t, data)
