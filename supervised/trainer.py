"""``MetaTrainer``: supervised meta-training (sinusoid, Omniglot, MiniImagenet) with the RK meta-gradient.

Data flows one way: the config becomes a trainer; each iteration the trainer asks the problem for a task batch,
hands the losses to the RK engine (:func:`rkmeta_rl.rk.meta_gradient`), gets one meta-gradient and gives it to
Adam. Everything around the iteration (``learn``, callbacks, logging, checkpoints and exact resume, the time
budget, the non-finite stop, signals, run folders) is :class:`~rkmeta_rl.common.base.BaseMetaAlgorithm`'s.

Data parallel: launched with ``torchrun`` (see :mod:`rkmeta_rl.distributed`), each of the ``world_size`` ranks
samples its share of the meta-batch (:func:`~rkmeta_rl.distributed.split_batch`) from its own task stream
(seeded with :func:`~rkmeta_rl.distributed.rank_seed`), computes the meta-gradient of those tasks, and one
``all_reduce`` averages the gradients (and the logged statistics) weighted by the ranks' task counts, so the
average is the mean over the whole meta-batch; every rank then takes the same Adam step. Evaluation is split
across ranks (each adapts its slice of the same tasks; results equal a one-process run). The checkpoint holds
every rank's task-stream state, so ``--resume`` with the same number of processes is exact.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Protocol

import numpy as np
import torch
from stable_baselines3.common.logger import Figure

from rkmeta_rl.common.base import BaseMetaAlgorithm
from rkmeta_rl.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    batch_slice,
    broadcast_params,
    rank_seed,
    split_batch,
)
from rkmeta_rl.errors import ConfigMismatchError, NonFiniteError
from rkmeta_rl.rk import (
    LossFn,
    Params,
    PerStage,
    StepSizes,
    adapt_and_score,
    meta_gradient,
    parse_method_spec,
    resolve_groups,
)
from rkmeta_rl.stats import mean_interval

from .config import FewShotConfig, MetaTrainConfig

__all__ = ["MetaTrainConfig", "FewShotConfig", "MetaProblem", "MetaTrainer", "NonFiniteError"]


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


class MetaTrainer(BaseMetaAlgorithm):
    """Meta-trains ``problem`` with the RK meta-gradient and Adam.

    Args:
        problem: the benchmark.
        config: run settings (validated before any work).
        logdir, resume, verbose, dist: see :class:`~rkmeta_rl.common.base.BaseMetaAlgorithm` (``resume``: every
            setting outside ``config.MAY_CHANGE`` must equal the checkpoint's, and so must the problem).
    """

    config_class = MetaTrainConfig
    config: MetaTrainConfig

    def __init__(self, problem: MetaProblem, config: MetaTrainConfig, logdir: str | None = None,
                 resume: bool = False, verbose: bool | int = False, dist: DistInfo | None = None) -> None:
        self.problem = problem
        super().__init__(config, logdir=logdir, resume=resume, verbose=int(verbose), dist=dist)

    def _setup_model(self) -> None:
        c = self.config
        #: tasks this rank draws per meta-iteration (the whole meta-batch without data parallelism)
        self.local_batch_size = split_batch(c.meta_batch_size, self.dist.rank, self.dist.world_size)
        #: the method: a Tableau, or a MethodMap of per-parameter methods (both have ``name`` and ``stages``)
        self.method_spec = parse_method_spec(c.method)
        self._compile = c.compile
        init_gen = torch.Generator().manual_seed(c.seed)
        self.params: Params = {k: v.to(self.device)
                               for k, v in self.problem.init_params(init_gen, self.device).items()}
        # every rank initialises from the same seed; the broadcast guards against any divergence
        broadcast_params(self.params, src=0)
        self._leaves = [p.requires_grad_(True) for p in self.params.values()]
        #: which parameters follow which method, and which the inner loop moves (names checked here, before work)
        self.groups = resolve_groups(list(self.params), self.method_spec, c.adapt)
        rates = self.groups.step_sizes(c.inner_lr, c.step_rule)
        #: the inner step sizes, in training and at test time: one float, or ``{name: alpha_l}``
        self.adapt_lr: StepSizes = rates if len(set(rates.values())) > 1 else next(iter(rates.values()))
        self.optimizer = torch.optim.Adam(self._leaves, lr=c.meta_lr)
        # the task stream has its own generator so evaluation never perturbs training (exact resume); each
        # rank has its own stream (rank 0's is the one-process stream)
        self.task_gen = torch.Generator().manual_seed(rank_seed(c.seed + 1, self.dist.rank))
        self.last_eval: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, path: str, problem: MetaProblem, dist: DistInfo | None = None, **overrides: Any) -> "MetaTrainer":
        """Rebuild a trainer from a checkpoint (``save``, ``CheckpointCallback`` or a run folder's) on
        ``problem``; ``overrides`` may change only the fields of ``config.MAY_CHANGE``."""
        return cls._load_with(path, overrides, lambda config: cls(problem, config, dist=dist))

    @property
    def iteration(self) -> int:
        """Meta-iterations done (``num_iterations``)."""
        return self.num_iterations

    # ------------------------------------------------------------------ state
    def _parameters(self) -> dict[str, torch.Tensor]:
        return self.params

    def _reseed(self, seed: int) -> None:
        self.task_gen.manual_seed(rank_seed(seed + 1, self.dist.rank))

    def _state_dict(self) -> dict[str, Any]:
        """Parameters, Adam, every rank's task-stream state (``task_gens`` in rank order; ``task_gen`` is rank 0's)
        and the problem's name. Collective under data parallelism."""
        gens = all_gather_objects(self.task_gen.get_state())
        return {"params": {k: v.detach().cpu() for k, v in self.params.items()},
                "optimizer": self.optimizer.state_dict(), "task_gen": gens[0], "task_gens": gens,
                "problem": self.problem.name}

    def _load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("problem", self.problem.name) != self.problem.name:
            raise ConfigMismatchError(f"--resume: the checkpoint was trained on problem {state['problem']!r}, this "
                                      f"run asks for {self.problem.name!r}")
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
            self.task_gen.manual_seed(rank_seed(self.config.seed + 1 + int(state["num_iterations"]), self.dist.rank))

    # ------------------------------------------------------------------ one step
    def _meta_gradient(self, data: Any, stats: bool = True) -> tuple[Params, dict[str, float]]:
        c = self.config
        kwargs = dict(method=self.method_spec, adapt=c.adapt, inner_lr=c.inner_lr, inner_steps=c.inner_steps,
                      step_rule=c.step_rule, first_order=c.first_order, path=c.path)
        compile = "auto" if self._compile is None else self._compile  # failures fall back inside, with a warning
        return meta_gradient(self.params, self.problem.support_loss, self.problem.query_loss, data,
                             compile=compile, chunk_size=c.train_chunk, stats=stats, **kwargs)

    def train_iteration(self) -> dict[str, float]:
        """One meta-iteration: sample tasks, RK meta-gradient, Adam step. Returns ``train/*`` statistics (the
        forward-only diagnostics ``query_loss_pre`` and ``support_loss_post``, and for one-stage methods
        ``query_loss_post``, on every ``config.diagnostics_interval``-th iteration only).

        Raises :class:`NonFiniteError` before the Adam step when a loss or the gradient is not finite (the
        parameters stay the last good ones). Under data parallelism this rank samples ``local_batch_size``
        tasks, and the meta-gradients and statistics are averaged over the ranks weighted by their task counts
        (one ``all_reduce``): the result is the mean over the whole meta-batch, and every rank takes the same
        Adam step."""
        c = self.config
        data = self.problem.sample_tasks(self.local_batch_size, self.task_gen, self.groups.stages, self.device)
        # the forward-only diagnostics on every diagnostics_interval-th iteration (the same on every rank)
        grads, stats = self._meta_gradient(data, stats=(self.num_iterations + 1) % c.diagnostics_interval == 0)
        if self.dist.distributed:
            keys = sorted(k for k in stats if k != "num_tasks")
            local = list(grads.values()) + [torch.tensor([stats[k] for k in keys], dtype=torch.float64)]
            reduced = all_reduce_mean(local, weight=self.local_batch_size)
            grads = dict(zip(grads.keys(), reduced[:-1]))
            stats = {k: float(v) for k, v in zip(keys, reduced[-1])}
            stats["num_tasks"] = float(c.meta_batch_size)
        stats["grad_norm"] = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])))
        out = {f"train/{k}": float(v) for k, v in stats.items()}
        self._check_finite(out, self.num_iterations + 1)
        for p, g in zip(self._leaves, grads.values()):
            p.grad = g
        self.optimizer.step()
        self.num_iterations += 1
        self.num_timesteps += c.meta_batch_size  # SB3's counter; here: tasks trained on
        return out

    #: the name benchmarks and older callers use
    step = train_iteration

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

    def figure(self) -> Any:
        """The problem's figure of a few tasks before and after adaptation (a fixed task stream)."""
        c = self.config
        return self.problem.figure(self.params, self.adapt_lr, c.test_inner_steps,
                                   torch.Generator().manual_seed(c.seed + 20_000), self.device)

    def _log_extra(self, iteration: int) -> None:
        """Every ``eval_interval`` iterations: evaluate on the validation split, and the problem's figure."""
        c = self.config
        if not (c.eval_interval and iteration % c.eval_interval == 0):
            return
        self._log_eval("eval", self.evaluate(c.eval_tasks, seed=c.seed + 10_000, split="val"))
        fig = self.figure() if self.is_main else None
        if fig is not None:
            self.logger.record("eval/figure", Figure(fig, close=True), exclude=("stdout", "csv"))

    def final_evaluation(self) -> dict[str, Any]:
        """Evaluate on ``final_eval_tasks`` fresh test tasks; returns per-step means and 95% CIs.

        The per-task values (``{metric: [tasks, steps + 1]}``) are kept in ``self.last_eval``."""
        c = self.config
        res = self.evaluate(c.final_eval_tasks, seed=c.seed + 30_000, split="test")
        self.last_eval = res
        out: dict[str, Any] = {}
        for key, arr in res.items():
            # Student-t over the test tasks (t(0.975, 599) = 1.964 for 600 tasks)
            means, cis, _ = zip(*(mean_interval(np.asarray(arr[:, s])) for s in range(arr.shape[1])))
            out[key] = {"mean": list(means), "ci95": list(cis)}
        self._log_eval("test", res)
        self.logger.dump(self.num_iterations)
        return out

    def write_metrics(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """End the run (:meth:`finish`): ``metrics.json`` with the run's settings, ``seconds`` and ``extra``."""
        c = self.config
        metrics = {"method": c.method, "iterations": self.num_iterations, "seconds": round(self.elapsed, 2),
                   "meta_batch_size": c.meta_batch_size, "inner_lr": c.inner_lr, "adapt_lr": self.adapt_lr,
                   "adapt": c.adapt,
                   "step_rule": c.step_rule, "first_order": c.first_order, "seed": c.seed,
                   "problem": self.problem.name, "stopped_by_time_budget": self.stopped_by == "time_budget"}
        metrics.update(extra)
        if self.dist.distributed:
            metrics["world_size"] = self.dist.world_size
        return self.finish(metrics)


def _slice_tasks(data: Any, sl: slice) -> Any:
    """Tasks ``sl`` of a task batch (every tensor leaf is indexed by task along its first dimension)."""
    if isinstance(data, PerStage):
        return PerStage([_slice_tasks(d, sl) for d in data])
    return torch.utils._pytree.tree_map(lambda t: t[sl] if isinstance(t, torch.Tensor) else t, data)
