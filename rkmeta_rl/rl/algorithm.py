"""``MetaTRPO``: RK-weighted MAML-TRPO with a Stable-Baselines3-style API.

Example::

    from rkmeta_rl import MetaTRPO
    model = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", method="ralston", tensorboard_log="runs")
    model.learn(100, progress_bar=True)
    adapted = model.adapt(task, num_steps=1)        # adapted parameters that also predict
    action, _ = adapted.predict(obs)                # or model.predict(obs, params=adapted)

Every setting is a field of :class:`~rkmeta_rl.rl.config.MetaTRPOConfig` (pass ``config=`` or the fields as
keyword arguments); defaults are the seed paper's 2D-navigation setting (Im et al., 2019; Finn et al., 2017).
``learn``, callbacks, logging, checkpoints, exact resume, the time budget, the non-finite stop, signals and run
folders are :class:`~rkmeta_rl.common.base.BaseMetaAlgorithm`'s; this module holds the meta-iteration (sample
tasks, D0, adapt, D1, TRPO meta-update) and the policy's own state.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch

from .. import envs as _envs
from ..common.base import BaseMetaAlgorithm
from ..distributed import DistInfo, all_gather_objects, all_reduce_mean, broadcast_params, rank_seed, split_batch
from ..envs.protocol import TaskFamilyError, validate_task_family
from ..rk import parse_method_spec
from ..utils import resolve_device
from .adapted import AdaptedPolicy
from .baseline import LinearFeatureBaseline
from .config import REFERENCE_NAV_KWARGS, MetaTRPOConfig
from .episodes import Episodes
from .meta_trpo import MetaTRPOStep, Reducer
from .policy import GaussianMLPPolicy, Params
from .sampler import Sampler, make_sampler

__all__ = ["MetaTRPO", "MetaTRPOConfig", "REFERENCE_NAV_KWARGS", "BUILTIN_ENV_IDS", "check_task_family",
           "resolve_device"]


def _check_box_actions(env: gym.Env, name: str) -> None:
    """Refuse a family whose action space is not a ``Box`` (the Gaussian policy needs continuous actions)."""
    if not isinstance(env.action_space, gym.spaces.Box):
        raise TaskFamilyError(f"{name}: the action space is {env.action_space}, but MetaTRPO's Gaussian policy "
                              "needs a continuous Box action space")


def _gymnasium_check(env: str | gym.Env) -> None:
    """Run Gymnasium's ``check_env`` on a fresh instance of the family; its failure becomes a TaskFamilyError."""
    from gymnasium.utils.env_checker import check_env

    inst = gym.make(env, disable_env_checker=True) if isinstance(env, str) else env
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(inst.unwrapped, skip_render_check=True)
    except Exception as err:  # noqa: BLE001 - the checker raises AssertionError and others
        name = env if isinstance(env, str) else type(inst.unwrapped).__name__
        raise TaskFamilyError(f"{name} fails Gymnasium's check_env: {type(err).__name__}: {err}") from err


#: Ids of the built-in task families (tested; :func:`check_task_family` skips them).
BUILTIN_ENV_IDS: frozenset[str] = frozenset((_envs.NAVIGATION_ID, *_envs.LOCOMOTION_IDS.values()))


def check_task_family(env: str | gym.Env) -> None:
    """Run :func:`~rkmeta_rl.envs.protocol.validate_task_family` on a family that is not built in.

    The family must have a ``Box`` action space, and it also goes through Gymnasium's own
    ``gymnasium.utils.env_checker.check_env``.

    Raises:
        TaskFamilyError: a non-``Box`` action space; what is missing or wrong (an unregistered id: close
            matches and the ``--module`` hint; a family without ``set_task`` whose
            ``reset(options={"task": ...})`` does not install the task: says both).
    """
    env_id = env if isinstance(env, str) else (env.spec.id if env.spec is not None else None)
    if env_id in BUILTIN_ENV_IDS:
        return
    base = gym.make(env, disable_env_checker=True) if isinstance(env, str) and env in gym.registry else env
    if not isinstance(base, str):
        _check_box_actions(base, str(env_id or type(base).__name__))
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
    _gymnasium_check(env)


class MetaTRPO(BaseMetaAlgorithm):
    """Meta-train a Gaussian MLP policy on a task family with RK-weighted MAML-TRPO.

    REINFORCE inner adaptation with a linear feature baseline and GAE, then a TRPO meta-update (conjugate
    gradient on the Fisher-vector product through the inner step, step scaled to ``max_kl``, backtracking line
    search, parameters restored when it fails).

    Args:
        policy: only ``"MlpPolicy"`` (a :class:`~rkmeta_rl.rl.policy.GaussianMLPPolicy`).
        env: a registered task-family id (``"module:Id"`` imports ``module`` first, as ``gym.make`` does) or an
            env instance. Families with a batched twin (2D navigation) are sampled with it; any other with
            :class:`~rkmeta_rl.rl.sampler.BatchedSampler`. A family that is not built in is checked with
            :func:`check_task_family` first (``check_env=False`` skips it).
        config: the settings (:class:`~rkmeta_rl.rl.config.MetaTRPOConfig`); keyword arguments named like its
            fields (``method=``, ``meta_batch_size=``, ``inner_lr=``, ...) override it.
        logdir, resume, verbose, dist, tensorboard_log: see :class:`~rkmeta_rl.common.base.BaseMetaAlgorithm`.

    Data parallelism (``world_size > 1``): each process samples its share ``split_batch(meta_batch_size, rank,
    world_size)`` of the meta-batch from its own streams (tasks, env seeds and action noise seeded with
    ``rank_seed(seed, rank)``; rank 0's are the one-process streams), the parameters are broadcast from rank 0
    once, and the TRPO gradient, every Fisher-vector product and the line search's objective and KL are averaged
    over the processes weighted by their task counts (the full meta-batch means), so every process takes the
    same step. The constructor, :meth:`train_iteration`, :meth:`learn`, :meth:`rng_state` and :meth:`save` are
    then collective; the rollout statistics are all-reduced means over the whole meta-batch.

    Random streams: the policy is initialised from ``seed`` (CPU generator); on CPU, rank 0's action noise
    continues that generator, on CUDA it is a CUDA generator seeded with ``rank_seed(seed, rank)``.
    :meth:`predict` draws from its own generator, so evaluating never perturbs training.
    """

    config_class = MetaTRPOConfig
    config: MetaTRPOConfig

    def __init__(self, policy: str = "MlpPolicy", env: str | gym.Env = "rkmeta/Navigation2D-v0",
                 config: MetaTRPOConfig | None = None, *, logdir: str | None = None, resume: bool = False,
                 tensorboard_log: str | None = None, verbose: int = 0, check_env: bool = True,
                 dist: DistInfo | None = None, **settings: Any) -> None:
        if policy != "MlpPolicy":
            raise ValueError(f"only 'MlpPolicy' is supported, got {policy!r}")
        config = MetaTRPOConfig() if config is None else config
        if isinstance(env, str) and ":" in env:
            import importlib

            module, env = env.split(":", 1)
            importlib.import_module(module)
        env_id = env if isinstance(env, str) else (env.spec.id if env.spec is not None else None)
        try:
            config = config.replace(env=env_id, **settings)
        except TypeError as err:
            raise TypeError(f"MetaTRPO: {err} (settings are the fields of MetaTRPOConfig)") from None
        config.validate()
        if check_env:
            check_task_family(env)
        self.env_id = env_id
        self.env = gym.make(env, disable_env_checker=True) if isinstance(env, str) else env
        _check_box_actions(self.env, str(env_id))
        super().__init__(config, logdir=logdir, resume=resume, verbose=verbose, dist=dist,
                         tensorboard_log=tensorboard_log)

    def _setup_model(self) -> None:
        c = self.config
        #: the method: a Tableau, or a MethodMap of per-parameter methods (both have ``name`` and ``stages``)
        self.tableau = parse_method_spec(c.method)
        self.method = self.tableau.name
        #: tasks this process samples per meta-iteration (the whole meta-batch without data parallelism)
        self.local_batch_size = split_batch(c.meta_batch_size, self.dist.rank, self.dist.world_size)
        obs_dim = int(np.prod(self.env.observation_space.shape))
        act_dim = int(np.prod(self.env.action_space.shape))
        stream_seed = rank_seed(c.seed, self.dist.rank)
        init_gen = torch.Generator(device="cpu").manual_seed(c.seed)
        self.policy = GaussianMLPPolicy(obs_dim, act_dim, generator=init_gen, device=self.device, **c.policy_kwargs)
        # every rank initialises from the same seed; the broadcast guards against any divergence
        if self.dist.distributed:
            broadcast_params(self.policy.params(), src=0)
        if self.device.type == "cpu":
            # rank 0 continues the initialisation stream (exactly the one-process stream)
            self.generator = init_gen if self.dist.rank == 0 else init_gen.manual_seed(stream_seed)
        else:
            self.generator = torch.Generator(device=self.device).manual_seed(stream_seed)
        self.rng = np.random.default_rng(stream_seed)
        self._predict_gen = torch.Generator(device=self.device).manual_seed(c.seed + 50_000)
        self.sampler: Sampler = make_sampler(self.env if self.env_id is None else self.env_id, self.policy,
                                             horizon=c.horizon, device=self.device, seed=stream_seed,
                                             sampler=c.sampler, num_workers=c.num_workers)
        trpo = dict(max_kl=c.max_kl, cg_iters=c.cg_iters, cg_damping=c.cg_damping,
                    ls_backtrack_ratio=c.ls_backtrack_ratio, ls_max_steps=c.ls_max_steps,
                    fvp_subsample=c.fvp_subsample)
        self.meta_step = MetaTRPOStep(self.policy, self.tableau, inner_lr=c.inner_lr, inner_steps=c.inner_steps,
                                      step_rule=c.step_rule, first_order=c.first_order, adapt=c.adapt, **trpo)
        self.baseline = LinearFeatureBaseline()
        #: per-iteration returns, KL and timings (for ``metrics.json``)
        self.history: list[dict[str, float]] = []

    # ---- the settings, as attributes -------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        """The config's fields read as attributes (``model.inner_lr``, ``model.gamma``, ...)."""
        config = self.__dict__.get("config")
        if config is not None and name in type(config).__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def alpha(self) -> float | dict[str, float]:
        """The method's inner (test-time) learning rate: one float, or ``{name: alpha_l}`` for per-parameter
        methods and ``adapt``."""
        return self.meta_step.alpha

    def close(self) -> None:
        """Close the logger and release the sampler's envs and workers (the model stays usable for ``predict``)."""
        super().close()
        close = getattr(self.sampler, "close", None)
        if close is not None:
            close()

    # ---- training -------------------------------------------------------------------------------------------
    def sample_episodes(self, tasks: list[Any], params: Mapping[str, torch.Tensor],
                        generator: torch.Generator | None = None, num_traj: int | None = None) -> Episodes:
        """Episodes of ``tasks`` under ``params`` (shared or per-task), with advantages computed.

        Args:
            tasks: the tasks.
            params: policy parameters (shared layout, or per task with a leading task dimension).
            generator: action-noise generator (default: training's stream).
            num_traj: trajectories per task (default ``fast_batch_size``).
        """
        c = self.config
        eps = self.sampler.sample(tasks, params, c.fast_batch_size if num_traj is None else num_traj,
                                  self.generator if generator is None else generator)
        return eps.compute_advantages(self.baseline, c.gamma, c.gae_lambda, c.normalize_advantages)

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
        d0 = self.sample_episodes(tasks, params)
        train = [d0.flat()]
        steps = d0.num_steps
        stats: dict[str, float] = {"rollout/pre_return": float(d0.episode_returns().mean())}
        valid = None
        if self.meta_step.adapts:
            adapted = self.meta_step.adapt(params, train)
            for _ in range(self.config.inner_steps - 1):
                dk = self.sample_episodes(tasks, adapted)
                steps += dk.num_steps
                train.append(dk.flat())
                adapted = self.meta_step.adapt(adapted, train[-1:])
            d1 = self.sample_episodes(tasks, adapted)
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
            steps = int(round(reduced[-1] * self.config.meta_batch_size))  # mean steps per task x all tasks
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
            "time/total_env_steps": float(self.num_timesteps),
            "time/sample_seconds": t1 - t0, "time/update_seconds": t2 - t1, "time/iteration_seconds": t2 - t0,
        })
        self.history.append({"iteration": self.num_iterations, "pre_return": stats["rollout/pre_return"],
                             "post_return": stats.get("rollout/post_return", float("nan")),
                             "kl": stats["train/kl"], "sample_seconds": t1 - t0, "update_seconds": t2 - t1})
        return stats

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` holds: pre/post-adaptation returns (means over the last 10 iterations), timings,
        sizes, and the per-iteration return history."""
        last = self.history[-10:]

        def mean_last(key: str) -> float:
            return float(np.mean([h.get(key, np.nan) for h in last])) if last else float("nan")

        c = self.config
        return {
            "method": self.tableau.name, "adapt": c.adapt, "iterations": self.num_iterations, "env": self.env_id,
            "pre_return": mean_last("pre_return"), "post_return": mean_last("post_return"),
            "seconds": round(self.elapsed, 1),
            "seconds_per_iteration": round(self.elapsed / max(1, self.num_iterations), 3),
            "sample_seconds_per_iteration": round(mean_last("sample_seconds"), 3),
            "update_seconds_per_iteration": round(mean_last("update_seconds"), 3),
            "env_steps": self.num_timesteps, "inner_lr": c.inner_lr, "adapt_lr": self.alpha,
            "meta_batch_size": c.meta_batch_size, "fast_batch_size": c.fast_batch_size, "seed": c.seed,
            "horizon": self.sampler.horizon, "fvp_subsample": c.fvp_subsample, "num_workers": c.num_workers,
            "world_size": self.dist.world_size, "device": str(self.device),
            "stopped_by_time_budget": self.stopped_by == "time_budget",
            "history": {"pre_return": [h["pre_return"] for h in self.history],
                        "post_return": [h["post_return"] for h in self.history]},
        }

    # ---- adaptation and acting ------------------------------------------------------------------------------
    def adapt(self, task: Any, num_steps: int = 1, num_traj: int | None = None,
              generator: torch.Generator | None = None) -> AdaptedPolicy:
        """Adapt to one task with the method's inner learning rate, sampling fresh episodes for every step.

        Args:
            task: the task (as ``sample_tasks`` returns it).
            num_steps: inner steps; 0 returns a copy of the meta-parameters.
            num_traj: trajectories per step (default ``fast_batch_size``).
            generator: action-noise generator of the adaptation episodes (default: training's stream).

        Returns:
            the adapted parameters (a mapping, shared layout, detached) that also ``predict``.
        """
        params: Params = {k: v.detach().clone() for k, v in self.policy.params().items()}
        for _ in range(int(num_steps)):
            eps = self.sample_episodes([task], params, generator, num_traj)
            adapted = self.meta_step.adapt(params, [eps.flat()])
            params = {k: v[0] for k, v in adapted.items()}
        return AdaptedPolicy(params, self)

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False,
                *, params: Mapping[str, torch.Tensor] | None = None) -> tuple[np.ndarray, None]:
        """SB3's ``predict``: action(s) for ``observation`` (``[obs_dim]`` or ``[n, obs_dim]``), clipped to the
        action space; ``(actions, None)`` (the policy has no recurrent state). ``params``: act with these
        parameters (e.g. :meth:`adapt`'s) instead of the meta-parameters. Works with
        ``stable_baselines3.common.evaluation.evaluate_policy``."""
        p = self.policy.params() if params is None else params
        obs = torch.as_tensor(np.asarray(observation), dtype=self.policy.log_std.dtype, device=self.device)
        act, _ = self.policy.sample(p, obs, generator=self._predict_gen, deterministic=deterministic)
        space = self.env.action_space
        out = act.cpu().numpy()
        if isinstance(space, gym.spaces.Box):
            out = np.clip(out, space.low, space.high)
        return out, None

    def get_env(self) -> None:
        """SB3's ``get_env``: a meta-learner trains on many task instances, not one env; ``None``."""
        return None

    # ---- state -----------------------------------------------------------------------------------------------
    def _parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.policy.params())

    def rng_state(self) -> dict[str, Any]:
        """This process's random state of task sampling, action noise and env seeding (for an exact resume)."""
        state: dict[str, Any] = {"torch": self.generator.get_state(), "numpy": self.rng.bit_generator.state}
        seed_rng = getattr(self.sampler, "seed_rng", None)
        if seed_rng is not None:
            state["sampler"] = seed_rng.bit_generator.state
        return state

    def set_rng_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`rng_state`."""
        self.generator.set_state(state["torch"])
        self.rng.bit_generator.state = state["numpy"]
        seed_rng = getattr(self.sampler, "seed_rng", None)
        if seed_rng is not None and "sampler" in state:
            seed_rng.bit_generator.state = state["sampler"]

    def _reseed(self, seed: int) -> None:
        """Reseed task sampling, action noise and env seeding."""
        self.generator.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        if getattr(self.sampler, "seed_rng", None) is not None:
            self.sampler.seed_rng = np.random.default_rng(seed)  # type: ignore[attr-defined]

    def _state_dict(self) -> dict[str, Any]:
        """Policy parameters, every rank's random state (``rngs`` in rank order; ``rng`` is rank 0's) and the
        history. Collective under data parallelism; loadable with ``torch.load(..., weights_only=True)``."""
        rngs = all_gather_objects(self.rng_state()) if self.dist.distributed else [self.rng_state()]
        return {"env_id": self.env_id, "policy_config": self.policy.config(),
                "params": {k: v.detach().cpu() for k, v in self.policy.params().items()},
                "rng": rngs[0], "rngs": rngs, "history": list(self.history)}

    def _load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`_state_dict`. A checkpoint written by a different number of processes warns: ranks
        without a saved state are reseeded from ``(seed, rank, iteration)``, so the continuation is not exact."""
        with torch.no_grad():
            for k, v in self.policy.params().items():
                v.copy_(state["params"][k])
        self.history = [dict(h) for h in state.get("history", [])]
        rngs = state.get("rngs", [state["rng"]] if "rng" in state else [])
        rank, world = self.dist.rank, self.dist.world_size
        if rngs and int(state.get("world_size", len(rngs))) != world:
            warnings.warn(f"resume: the checkpoint was written by {state.get('world_size', len(rngs))} process(es), "
                          f"this run has {world}; parameters continue, but the random streams of ranks without a "
                          "saved state are reseeded, so the run is not an exact continuation", RuntimeWarning,
                          stacklevel=3)
        if rank < len(rngs):
            self.set_rng_state(rngs[rank])
        elif rngs:
            self._reseed(rank_seed(self.config.seed + int(state["num_iterations"]), rank))

    @classmethod
    def load(cls, path: str, env: str | gym.Env | None = None, device: str | None = None,
             dist: DistInfo | None = None, **overrides: Any) -> "MetaTRPO":
        """Rebuild a model saved by :meth:`save`.

        ``overrides`` (and ``device``) may change only the fields of ``MetaTRPOConfig.MAY_CHANGE``; any other
        difference from the saved config is refused naming the field. Collective under data parallelism (every
        rank reads ``path``; rank r restores rank r's saved random state).

        Raises:
            CheckpointError: ``path`` is damaged or not a MetaTRPO checkpoint (it says what it is).
            ConfigMismatchError: an override changes a training setting.
        """
        if device is not None:
            overrides["device"] = device
        if isinstance(env, str):
            overrides["env"] = env

        def make(config: MetaTRPOConfig) -> MetaTRPO:
            env_ = env if env is not None else config.env
            if env_ is None:
                raise ValueError("the model was trained on an unregistered env instance: pass env=")
            return cls("MlpPolicy", env_, config=config, dist=dist)

        return cls._load_with(path, overrides, make)
