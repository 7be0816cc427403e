"""Meta-training loop shared by the supervised benchmarks (sinusoid, Omniglot, MiniImagenet).

Data flows one way (DESIGN.md section 5): the config becomes a trainer; the trainer asks the problem for a
task batch, hands the losses to the RK engine (:func:`rkmeta_rl.rk.meta_gradient`), gets one meta-gradient
and gives it to Adam; the logger (SB3's) and the atomic checkpointer watch from the side.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
from stable_baselines3.common.logger import Figure, Logger
from tqdm.auto import tqdm

from rkmeta_rl.checkpoint import FINAL, LATEST, latest_checkpoint, load_checkpoint, save_checkpoint
from rkmeta_rl.logger import make_logger
from rkmeta_rl.rk import LossFn, Params, adapt_and_score, get_tableau, meta_gradient
from rkmeta_rl.utils import check_positive, get_device, mean_ci95, set_threads, write_json_atomic

__all__ = ["MetaTrainConfig", "MetaProblem", "MetaTrainer", "NonFiniteError"]


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class MetaTrainConfig:
    """Settings of a supervised meta-training run (defaults: the sinusoid benchmark, DESIGN.md section 4).

    Attributes:
        method: RK method (tableau name or generic x > 0).
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
        get_tableau(self.method)
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
        """The method's own inner learning rate (used in training and at test time)."""
        return get_tableau(self.method).inner_lr(self.inner_lr, self.step_rule)


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

    def figure(self, params: Params, adapt_lr: float, steps: int, generator: torch.Generator,
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
        resume: continue from ``logdir``'s latest checkpoint (error if there is none).
        verbose: print the logger's table to stdout.
    """

    def __init__(self, problem: MetaProblem, config: MetaTrainConfig, logdir: str | None = None,
                 resume: bool = False, verbose: bool = False) -> None:
        config.validate()
        set_threads(config.threads)
        self.problem = problem
        self.config = config
        self.logdir = logdir
        self.device = get_device(config.device)
        self.tableau = get_tableau(config.method)
        self.iteration = 0
        self.elapsed = 0.0
        self._compile = config.compile
        init_gen = torch.Generator().manual_seed(config.seed)
        self.params: Params = {k: v.to(self.device) for k, v in problem.init_params(init_gen, self.device).items()}
        self._leaves = [p.requires_grad_(True) for p in self.params.values()]
        self.optimizer = torch.optim.Adam(self._leaves, lr=config.meta_lr)
        # the task stream has its own generator so evaluation never perturbs training (exact resume)
        self.task_gen = torch.Generator().manual_seed(config.seed + 1)
        if resume:
            if logdir is None:
                raise ValueError("resume needs a logdir")
            ckpt = latest_checkpoint(logdir)
            if ckpt is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {logdir}")
            self._restore(load_checkpoint(ckpt, map_location=self.device))
        self.logger: Logger = make_logger(logdir, resume=resume, verbose=verbose)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: parameters, Adam, task-stream RNG, counters, config."""
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "task_gen": self.task_gen.get_state(),
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "config": asdict(self.config),
            "problem": self.problem.name,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        saved = state.get("config", {})
        for key in ("method", "meta_batch_size", "inner_lr", "inner_steps", "step_rule", "first_order", "seed"):
            if key in saved and saved[key] != getattr(self.config, key):
                raise ValueError(f"--resume: the checkpoint was trained with {key}={saved[key]!r}, "
                                 f"but this run asks for {getattr(self.config, key)!r}")
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v.to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_gen.set_state(state["task_gen"])
        self.iteration = int(state["iteration"])
        self.elapsed = float(state.get("elapsed", 0.0))

    def save(self, name: str = LATEST) -> str | None:
        """Atomically write the checkpoint ``name`` into the run directory."""
        if self.logdir is None:
            return None
        return save_checkpoint(os.path.join(self.logdir, name), self.state_dict())

    # ------------------------------------------------------------------ one step
    def _meta_gradient(self, data: Any) -> tuple[Params, dict[str, float]]:
        c = self.config
        kwargs = dict(method=self.tableau, inner_lr=c.inner_lr, inner_steps=c.inner_steps, step_rule=c.step_rule,
                      first_order=c.first_order, path=c.path)
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
        """One meta-iteration: sample tasks, RK meta-gradient, Adam step. Raises :class:`NonFiniteError`."""
        c = self.config
        data = self.problem.sample_tasks(c.meta_batch_size, self.task_gen, self.tableau.stages, self.device)
        grads, stats = self._meta_gradient(data)
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

        Returns:
            ``{metric: array [num_tasks, steps + 1]}``.
        """
        steps = self.config.test_inner_steps if steps is None else steps
        gen = torch.Generator().manual_seed(seed)
        chunk = self.config.eval_chunk or num_tasks
        parts: list[dict[str, torch.Tensor]] = []
        done = 0
        while done < num_tasks:
            n = min(chunk, num_tasks - done)
            data = self.problem.sample_tasks(n, gen, 2, self.device, split=split)
            parts.append(adapt_and_score(self.params, self.problem.support_loss, self.problem.metric_fn, data,
                                         self.config.adapt_lr, steps, path=self.config.path))
            done += n
        return {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}

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
        bar = tqdm(total=c.iterations, initial=self.iteration, disable=not progress_bar, desc=c.method,
                   unit="it", mininterval=1.0, dynamic_ncols=True)
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
                        fig = self.problem.figure(self.params, c.adapt_lr, c.test_inner_steps,
                                                  torch.Generator().manual_seed(c.seed + 20_000), self.device)
                        if fig is not None:
                            self.logger.record("eval/figure", Figure(fig, close=True), exclude=("stdout", "csv"))
                    self.logger.dump(it)
                if it % c.checkpoint_interval == 0:
                    self.save(LATEST)
                if callback is not None and callback(self, it, stats) is False:
                    break
                if budget is not None and self.elapsed >= budget:
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
        metrics = {"method": c.method, "iterations": self.iteration, "seconds": round(self.elapsed, 2),
                   "meta_batch_size": c.meta_batch_size, "inner_lr": c.inner_lr, "adapt_lr": c.adapt_lr,
                   "step_rule": c.step_rule, "first_order": c.first_order, "seed": c.seed,
                   "problem": self.problem.name, "stopped_by_time_budget": getattr(self, "stopped_by_budget", False)}
        metrics.update(extra)
        if self.logdir is not None:
            write_json_atomic(os.path.join(self.logdir, "metrics.json"), metrics)
        return metrics

    def close(self) -> None:
        """Close the logger's files."""
        self.logger.close()
