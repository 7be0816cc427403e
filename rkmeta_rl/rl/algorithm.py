"""``MetaTRPO``: RK-weighted MAML-TRPO with a Stable-Baselines3-style API (DESIGN.md section 2).

Example::

    from rkmeta_rl import MetaTRPO
    model = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", method="ralston", tensorboard_log="runs")
    model.learn(100, progress_bar=True)
    adapted = model.adapt(task, num_steps=1)
    action, _ = model.predict(obs, params=adapted)

Defaults are the seed paper's 2D-navigation setting (Im et al., 2019; Finn et al., 2017): 2x100 ReLU policy,
inner learning rate 0.16 (MAML's alpha; ``step_rule="tableau"`` makes ``midpoint`` adapt with exactly 0.16),
40 tasks x 20 trajectories, horizon 100. The widely used reference implementation's setting is
``MetaTRPO(..., meta_batch_size=20, inner_lr=0.1, policy_kwargs={"hidden_sizes": (64, 64), "activation": "tanh"})``
(:data:`REFERENCE_NAV_KWARGS`).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import configure_logger

from .. import envs as _envs  # noqa: F401  (registers the built-in task families)
from ..checkpoint import save_checkpoint
from ..distributed import (DistInfo, all_gather_objects, all_reduce_mean, broadcast_params, current_dist,
                           rank_seed, split_batch)
from ..envs.protocol import TaskFamilyError, validate_task_family
from ..rk import AdaptSpec, MethodSpec, parse_adapt, parse_method_spec
from .baseline import LinearFeatureBaseline
from .episodes import Episodes
from .meta_trpo import MetaTRPOStep, Reducer
from .policy import GaussianMLPPolicy, Params
from .sampler import Sampler, make_sampler

__all__ = ["MetaTRPO", "REFERENCE_NAV_KWARGS", "BUILTIN_ENV_IDS", "check_task_family", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; ``"cuda"`` -> the current CUDA device (under torchrun the one
    :func:`~rkmeta_rl.distributed.init_distributed` pinned). Never falls back silently.

    Raises:
        RuntimeError: CUDA was asked for but is not available.
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} asked for, but CUDA is not available (use --device cpu "
                               "or auto)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev

#: Ids of the built-in task families (tested; :func:`check_task_family` skips them).
BUILTIN_ENV_IDS: frozenset[str] = frozenset((_envs.NAVIGATION_ID, *_envs.LOCOMOTION_IDS.values()))


def check_task_family(env: str | gym.Env) -> None:
    """Run :func:`~rkmeta_rl.envs.protocol.validate_task_family` on a family that is not built in.

    Raises:
        TaskFamilyError: what is missing or wrong (an unregistered id: close matches and the ``--module``
            hint; a family without ``set_task`` whose ``reset(options={"task": ...})`` does not install the
            task: says both).
    """
    env_id = env if isinstance(env, str) else (env.spec.id if env.spec is not None else None)
    if env_id in BUILTIN_ENV_IDS:
        return
    try:
        validate_task_family(env)
    except TaskFamilyError as err:
        if isinstance(env, str) and env not in gym.registry:
            raise
        base = (gym.make(env, disable_env_checker=True) if isinstance(env, str) else env).unwrapped
        if not callable(getattr(base, "set_task", None)) and "get_task() returned" in str(err):
            raise TaskFamilyError(
                f"{type(base).__name__} has no set_task(task), and its reset(options={{'task': task}}) does not "
                f"install the task either: add set_task(task), or make reset read options['task'] ({err})"
            ) from err
        raise

#: The reference MAML-RL implementation's 2D-navigation setting (one dict away from the default).
REFERENCE_NAV_KWARGS: dict[str, Any] = {
    "meta_batch_size": 20, "fast_batch_size": 20, "inner_lr": 0.1,
    "policy_kwargs": {"hidden_sizes": (64, 64), "activation": "tanh"},
}

Callback = Callable[["MetaTRPO", dict[str, float]], Any]


class MetaTRPO:
    """Meta-train a Gaussian MLP policy on a task family with RK-weighted MAML-TRPO.

    Args:
        policy: only ``"MlpPolicy"`` (a :class:`~rkmeta_rl.rl.policy.GaussianMLPPolicy`).
        env: a registered task-family id or an env instance. Families with a batched twin (2D navigation) are
            sampled with it; any other with :class:`~rkmeta_rl.rl.sampler.BatchedSampler` (every task x
            trajectory env stepped together, one policy forward per step). A family that is not built in is
            checked with :func:`check_task_family` first.
        method: RK tableau (one or two stages): ``euler``, ``midpoint`` (MAML), ``heun``, ``ralston``, ``itb``,
            ``generic(x)`` or a number; or per-parameter methods over the policy's parameter names
            (:mod:`rkmeta_rl.rl.policy`), ``{"w2|b2|log_std": "midpoint", "*": "ralston"}`` or that as a string
            ``"w2|b2|log_std=midpoint,*=ralston"``.
        adapt: the parameters the inner step moves (globs; default all; ANIL: ``"w2|b2|log_std"``).
        meta_batch_size: tasks per meta-iteration.
        fast_batch_size: trajectories per task for each of D0 and D1.
        inner_lr: MAML's inner learning rate (0.16: the seed paper's navigation setting). The method adapts
            with ``tableau.inner_lr(inner_lr, step_rule)``.
        inner_steps: inner gradient steps (each on freshly sampled episodes).
        step_rule: ``"tableau"`` or ``"fixed"``.
        max_kl, cg_iters, cg_damping, ls_backtrack_ratio, ls_max_steps: TRPO settings (Schulman et al., 2015).
        gamma, gae_lambda: discount and GAE lambda.
        first_order: drop second-order terms through the inner step.
        seed: seeds task sampling, policy initialisation and action noise.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` (raises when CUDA is not available; never
            falls back to the CPU). With CUDA the policy, the action noise (a CUDA generator), a batched twin's
            envs (2D navigation), the episodes and the whole meta-update live on the GPU; Gymnasium / MuJoCo
            families step on the CPU with one batched host-to-device transfer of the observations per time step.
        tensorboard_log: folder for TensorBoard runs (``MetaTRPO_<n>`` inside), or None.
        policy_kwargs: ``hidden_sizes``, ``activation``, ``init_log_std``.
        verbose: 1 also logs to stdout.
        horizon: episode horizon (default: the env's ``max_episode_steps``).
        fvp_subsample: fraction of steps for the Fisher-vector product (1.0 exact; see
            :class:`~rkmeta_rl.rl.meta_trpo.MetaTRPOStep`).
        normalize_advantages: standardise advantages per task (the reference code does).
        sampler: ``"auto"`` (twin if the family has one, else batched), ``"twin"``, ``"batched"`` or ``"gym"``
            (the slow reference loop); see :func:`~rkmeta_rl.rl.sampler.make_sampler`.
        num_workers: worker processes of the batched sampler (1: in-process, the fastest on few cores). Results
            do not depend on it.
        check_env: validate a family that is not built in (:func:`check_task_family`).
        dist: data parallelism (issue 6; default: the initialised ``torch.distributed`` group, if any, see
            :func:`rkmeta_rl.distributed.init_distributed`). With ``world_size > 1`` each process samples its
            share ``split_batch(meta_batch_size, rank, world_size)`` of the meta-batch from its own streams
            (tasks, env seeds and action noise seeded with ``rank_seed(seed, rank)``; rank 0's are the
            one-process streams), the parameters are broadcast from rank 0 once, and the TRPO gradient, every
            Fisher-vector product and the line search's objective and KL are averaged over the processes
            weighted by their task counts (the full meta-batch means), so every process takes the same step.
            The constructor, :meth:`train_iteration`, :meth:`learn`, :meth:`rng_state` and :meth:`save` are
            then collective (every rank calls them in the same order); the rollout statistics are all-reduced
            means over the whole meta-batch.

    Random streams: the policy is initialised from ``seed`` (CPU generator); on CPU, rank 0's action noise
    continues that generator (as before data parallelism), on CUDA it is a CUDA generator seeded with
    ``rank_seed(seed, rank)``.
    """

    def __init__(
        self,
        policy: str = "MlpPolicy",
        env: str | gym.Env = "rkmeta/Navigation2D-v0",
        method: MethodSpec = "ralston",
        meta_batch_size: int = 40,
        fast_batch_size: int = 20,
        inner_lr: float = 0.16,
        inner_steps: int = 1,
        step_rule: str = "tableau",
        max_kl: float = 0.01,
        cg_iters: int = 10,
        cg_damping: float = 1e-5,
        ls_backtrack_ratio: float = 0.8,
        ls_max_steps: int = 15,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        first_order: bool = False,
        seed: int = 0,
        device: str | torch.device = "auto",
        tensorboard_log: str | None = None,
        policy_kwargs: Mapping[str, Any] | None = None,
        verbose: int = 0,
        horizon: int | None = None,
        fvp_subsample: float = 1.0,
        normalize_advantages: bool = True,
        sampler: str = "auto",
        num_workers: int = 1,
        check_env: bool = True,
        dist: DistInfo | None = None,
        adapt: AdaptSpec = None,
    ) -> None:
        if policy != "MlpPolicy":
            raise ValueError(f"only 'MlpPolicy' is supported, got {policy!r}")
        if check_env:
            check_task_family(env)
        self.env_id = env if isinstance(env, str) else (env.spec.id if env.spec is not None else None)
        self.env = gym.make(env, disable_env_checker=True) if isinstance(env, str) else env
        #: the method: a Tableau, or a MethodMap of per-parameter methods (both have ``name`` and ``stages``)
        self.tableau = parse_method_spec(method)
        self.method = self.tableau.name if not isinstance(method, (int, float)) else method
        adapt_patterns = parse_adapt(adapt)
        self.meta_batch_size = int(meta_batch_size)
        self.fast_batch_size = int(fast_batch_size)
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.step_rule = step_rule
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.first_order = bool(first_order)
        self.seed = int(seed)
        self.dist: DistInfo = dist if dist is not None else current_dist()
        #: tasks this process samples per meta-iteration (the whole meta-batch without data parallelism)
        self.local_batch_size = split_batch(self.meta_batch_size, self.dist.rank, self.dist.world_size)
        self.device = resolve_device(device)
        self.tensorboard_log = tensorboard_log
        self.policy_kwargs = dict(policy_kwargs or {})
        self.verbose = int(verbose)
        self.normalize_advantages = bool(normalize_advantages)
        self._trpo_kwargs = {"max_kl": max_kl, "cg_iters": cg_iters, "cg_damping": cg_damping,
                             "ls_backtrack_ratio": ls_backtrack_ratio, "ls_max_steps": ls_max_steps,
                             "fvp_subsample": fvp_subsample}
        self._init_kwargs: dict[str, Any] = {
            "method": self.method, "meta_batch_size": self.meta_batch_size, "fast_batch_size": self.fast_batch_size,
            "inner_lr": self.inner_lr, "inner_steps": self.inner_steps, "step_rule": step_rule,
            "gamma": self.gamma, "gae_lambda": self.gae_lambda, "first_order": self.first_order, "seed": self.seed,
            "policy_kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.policy_kwargs.items()},
            "verbose": self.verbose, "horizon": horizon, "normalize_advantages": self.normalize_advantages,
            "sampler": sampler, "num_workers": int(num_workers), **self._trpo_kwargs,
            "adapt": None if adapt_patterns is None else list(adapt_patterns),
        }

        obs_dim = int(np.prod(self.env.observation_space.shape))
        act_dim = int(np.prod(self.env.action_space.shape))
        stream_seed = rank_seed(self.seed, self.dist.rank)
        init_gen = torch.Generator(device="cpu").manual_seed(self.seed)
        self.policy = GaussianMLPPolicy(obs_dim, act_dim, generator=init_gen, device=self.device,
                                        **self.policy_kwargs)
        # every rank initialises from the same seed; the broadcast guards against any divergence
        if self.dist.distributed:
            broadcast_params(self.policy.params(), src=0)
        if self.device.type == "cpu":
            # rank 0 continues the initialisation stream (exactly the one-process stream)
            self.generator = init_gen if self.dist.rank == 0 else init_gen.manual_seed(stream_seed)
        else:
            self.generator = torch.Generator(device=self.device).manual_seed(stream_seed)
        self.rng = np.random.default_rng(stream_seed)
        self.sampler: Sampler = make_sampler(self.env if self.env_id is None else self.env_id, self.policy,
                                             horizon=horizon, device=self.device, seed=stream_seed,
                                             sampler=sampler, num_workers=num_workers)
        self.meta_step = MetaTRPOStep(self.policy, self.tableau, inner_lr=self.inner_lr, inner_steps=self.inner_steps,
                                      step_rule=step_rule, first_order=self.first_order, adapt=adapt_patterns,
                                      **self._trpo_kwargs)
        self.baseline = LinearFeatureBaseline()
        self.num_iterations = 0
        self.num_timesteps = 0
        self._logger: Logger | None = None

    # ---- properties ---------------------------------------------------------------------------------
    @property
    def alpha(self) -> float | dict[str, float]:
        """The method's inner (test-time) learning rate: one float, or ``{name: alpha_l}`` for per-parameter
        methods and ``adapt=``."""
        return self.meta_step.alpha

    @property
    def logger(self) -> Logger:
        """The SB3 logger (created on first use; writes nowhere on ranks other than 0)."""
        if self._logger is None:
            # under data parallelism only rank 0 logs; the others get a logger that writes nowhere
            self._logger = configure_logger(self.verbose, self.tensorboard_log, "MetaTRPO") if self.dist.is_main \
                else Logger(folder=None, output_formats=[])
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        self._logger = logger

    def close(self) -> None:
        """Release the sampler's env instances and worker processes (the model stays usable for ``predict``)."""
        close = getattr(self.sampler, "close", None)
        if close is not None:
            close()

    # ---- training -------------------------------------------------------------------------------------
    def _sample(self, tasks: list[Any], params: Mapping[str, torch.Tensor]) -> Episodes:
        eps = self.sampler.sample(tasks, params, self.fast_batch_size, self.generator)
        return eps.compute_advantages(self.baseline, self.gamma, self.gae_lambda, self.normalize_advantages)

    def _reducer(self) -> Reducer | None:
        """The task-count weighted mean over processes, or ``None`` without data parallelism."""
        if not self.dist.distributed:
            return None
        weight = float(self.local_batch_size)
        return lambda tensors: all_reduce_mean(tensors, weight=weight)

    def train_iteration(self) -> dict[str, float]:
        """One meta-iteration: sample tasks, D0, adapt, D1, TRPO meta-update. Returns its statistics.

        Collective under data parallelism (see the class docstring): the statistics are full-batch means, the
        same on every process (``time/*`` are this process's)."""
        t0 = time.perf_counter()
        tasks = self.sampler.sample_tasks(self.local_batch_size, self.rng)
        params = self.policy.params()
        d0 = self._sample(tasks, params)
        train = [d0.flat()]
        steps = d0.num_steps
        stats: dict[str, float] = {"rollout/pre_return": float(d0.episode_returns().mean())}
        valid = None
        if self.meta_step.adapts:
            adapted = self.meta_step.adapt(params, train)
            for _ in range(self.inner_steps - 1):
                dk = self._sample(tasks, adapted)
                steps += dk.num_steps
                train.append(dk.flat())
                adapted = self.meta_step.adapt(adapted, train[-1:])
            d1 = self._sample(tasks, adapted)
            steps += d1.num_steps
            valid = d1.flat()
            stats["rollout/post_return"] = float(d1.episode_returns().mean())
            stats["rollout/post_ep_len"] = float(d1.lengths().mean())
        stats["rollout/pre_ep_len"] = float(d0.lengths().mean())
        reduce = self._reducer()
        if reduce is not None:
            # every task has fast_batch_size episodes, so the task-count weighted mean is the full-batch mean
            keys = sorted(stats)
            reduced = reduce([torch.tensor([stats[k] for k in keys] + [steps / self.local_batch_size],
                                           dtype=torch.float64)])[0].tolist()
            stats = dict(zip(keys, reduced[:-1]))
            steps = int(round(reduced[-1] * self.meta_batch_size))  # mean steps per task x all tasks
        t1 = time.perf_counter()
        trpo = self.meta_step.step(params, train, valid, reduce)
        t2 = time.perf_counter()
        self.num_iterations += 1
        self.num_timesteps += steps
        stats.update({
            "train/kl": trpo["kl"], "train/surrogate_improvement": trpo["improvement"],
            "train/surrogate_before": trpo["loss_before"], "train/ls_steps": trpo["ls_steps"],
            "train/step_accepted": trpo["accepted"], "train/step_frac": trpo["step_frac"],
            "train/cg_residual": trpo["cg_residual"], "train/grad_norm": trpo["grad_norm"],
            "train/log_std": float(self.policy.log_std.detach().mean()),
            "time/iteration": float(self.num_iterations), "time/total_env_steps": float(self.num_timesteps),
            "time/sample_seconds": t1 - t0, "time/update_seconds": t2 - t1, "time/iteration_seconds": t2 - t0,
        })
        return stats

    def learn(self, total_iterations: int, callback: Callback | None = None, progress_bar: bool = False
              ) -> "MetaTRPO":
        """Run ``total_iterations`` meta-iterations.

        Args:
            total_iterations: meta-iterations to run.
            callback: ``callback(model, stats) -> bool | None`` after each iteration; ``False`` stops training.
            progress_bar: show a tqdm bar.
        """
        iterator: Any = range(int(total_iterations))
        if progress_bar:
            from tqdm.auto import tqdm
            iterator = tqdm(iterator, desc=f"MetaTRPO[{self.tableau.name}]", disable=not self.dist.is_main)
        for _ in iterator:
            stats = self.train_iteration()
            for k, v in stats.items():
                self.logger.record(k, v)
            self.logger.dump(step=self.num_iterations)
            if progress_bar:
                iterator.set_postfix(pre=f"{stats['rollout/pre_return']:.1f}",
                                     post=f"{stats.get('rollout/post_return', float('nan')):.1f}")
            if callback is not None and callback(self, stats) is False:
                break
        return self

    # ---- adaptation and acting --------------------------------------------------------------------------
    def adapt(self, task: Any, num_steps: int = 1, num_traj: int | None = None) -> Params:
        """Adapt to one task with the method's inner learning rate, sampling fresh episodes for every step.

        Returns:
            adapted parameters (shared layout, detached); ``num_steps=0`` returns a copy of the meta-parameters.
        """
        params: Params = {k: v.detach().clone() for k, v in self.policy.params().items()}
        n = self.fast_batch_size if num_traj is None else int(num_traj)
        for _ in range(int(num_steps)):
            eps = self.sampler.sample([task], params, n, self.generator)
            eps.compute_advantages(self.baseline, self.gamma, self.gae_lambda, self.normalize_advantages)
            adapted = self.meta_step.adapt(params, [eps.flat()])
            params = {k: v[0] for k, v in adapted.items()}
        return params

    def predict(self, observation: np.ndarray, params: Mapping[str, torch.Tensor] | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Action(s) for ``observation`` (``[obs_dim]`` or ``[n, obs_dim]``), clipped to the action space.

        Returns ``(actions, None)`` like Stable-Baselines3's ``predict``.
        """
        p = self.policy.params() if params is None else params
        obs = torch.as_tensor(np.asarray(observation), dtype=self.policy.log_std.dtype, device=self.device)
        act, _ = self.policy.sample(p, obs, generator=self.generator, deterministic=deterministic)
        space = self.env.action_space
        out = act.cpu().numpy()
        if isinstance(space, gym.spaces.Box):
            out = np.clip(out, space.low, space.high)
        return out, None

    # ---- persistence ------------------------------------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        """This process's random state of task sampling, action noise and env seeding (for an exact resume)."""
        state: dict[str, Any] = {"torch": self.generator.get_state(), "numpy": self.rng.bit_generator.state}
        seed_rng = getattr(self.sampler, "_seed_rng", None)
        if seed_rng is not None:
            state["sampler"] = seed_rng.bit_generator.state
        return state

    def set_rng_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`rng_state`."""
        self.generator.set_state(state["torch"])
        self.rng.bit_generator.state = state["numpy"]
        seed_rng = getattr(self.sampler, "_seed_rng", None)
        if seed_rng is not None and "sampler" in state:
            seed_rng.bit_generator.state = state["sampler"]

    def save(self, path: str, extra: Mapping[str, Any] | None = None) -> None:
        """Save configuration, policy parameters, counters and random state, atomically (temporary file, then
        rename), loadable with ``torch.load(..., weights_only=True)``.

        Collective under data parallelism: every rank's random state is gathered (``rngs``, in rank order;
        ``rng`` is rank 0's, as in one-process checkpoints) and rank 0 alone writes the file.

        Args:
            path: file to write.
            extra: more plain data to keep (e.g. a training script's history); returned by :meth:`load_extra`.
        """
        rngs = all_gather_objects(self.rng_state()) if self.dist.distributed else [self.rng_state()]
        if not self.dist.is_main:
            return
        save_checkpoint(path, {
            "format": "rkmeta_rl.MetaTRPO/1",
            "env_id": self.env_id,
            "kwargs": self._init_kwargs,
            "policy_config": self.policy.config(),
            "params": {k: v.detach().cpu() for k, v in self.policy.params().items()},
            "num_iterations": self.num_iterations,
            "num_timesteps": self.num_timesteps,
            "rng": rngs[0],
            "rngs": rngs,
            "world_size": self.dist.world_size,
            "extra": dict(extra or {}),
        })

    @staticmethod
    def load_extra(path: str) -> dict[str, Any]:
        """The ``extra`` dict stored by :meth:`save`."""
        return dict(torch.load(path, map_location="cpu", weights_only=True).get("extra", {}))

    @classmethod
    def load(cls, path: str, env: str | gym.Env | None = None, device: str | torch.device = "auto",
             dist: DistInfo | None = None, **overrides: Any) -> "MetaTRPO":
        """Rebuild a model saved by :meth:`save` (``env`` overrides the saved id).

        Under data parallelism (collective; every rank reads ``path``) rank r restores rank r's saved random
        state. A checkpoint written by a different number of processes warns: ranks without a saved state are
        reseeded from ``(seed, rank, iteration)``, so the continuation is not exact.
        """
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        kwargs = dict(ckpt["kwargs"])
        kwargs.update(overrides)
        env_ = env if env is not None else ckpt["env_id"]
        if env_ is None:
            raise ValueError("the model was trained on an unregistered env instance: pass env=")
        model = cls("MlpPolicy", env_, device=device, dist=dist, **kwargs)
        with torch.no_grad():
            for k, v in model.policy.params().items():
                v.copy_(ckpt["params"][k])
        model.num_iterations = int(ckpt["num_iterations"])
        model.num_timesteps = int(ckpt["num_timesteps"])
        rngs = ckpt.get("rngs", [ckpt["rng"]] if "rng" in ckpt else [])
        rank, world = model.dist.rank, model.dist.world_size
        if rngs and int(ckpt.get("world_size", len(rngs))) != world:
            warnings.warn(f"resume: the checkpoint was written by {ckpt.get('world_size', len(rngs))} process(es), "
                          f"this run has {world}; parameters continue, but the random streams of ranks without a "
                          "saved state are reseeded, so the run is not an exact continuation", RuntimeWarning,
                          stacklevel=2)
        if rank < len(rngs):
            model.set_rng_state(rngs[rank])
        elif rngs:
            model._reseed(rank_seed(model.seed + model.num_iterations, rank))
        return model

    def _reseed(self, seed: int) -> None:
        """Reseed task sampling, action noise and env seeding (a rank without a saved random state)."""
        self.generator.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        if getattr(self.sampler, "_seed_rng", None) is not None:
            self.sampler._seed_rng = np.random.default_rng(seed)  # type: ignore[attr-defined]
