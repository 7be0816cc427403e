"""Meta-reinforcement learning: functional Gaussian policies, samplers, baselines, GAE and RK-weighted
MAML-TRPO (docs/meta_rl.md)."""

from .algorithm import REFERENCE_NAV_KWARGS, MetaTRPO
from .baseline import LinearFeatureBaseline, baseline_features, fit_linear_baseline
from .episodes import Episodes, FlatBatch, normalize_per_task
from .gae import discounted_returns, gae
from .meta_trpo import MetaTRPOStep, kl_to, reinforce_loss, surrogate_loss
from .policy import GaussianMLPPolicy, Params, gaussian_log_prob, per_task
from .sampler import GymSampler, Sampler, TwinSampler, make_sampler
from .trpo import TRPOStats, conjugate_gradient, flatten, trpo_update, unflatten

__all__ = [
    "LinearFeatureBaseline", "baseline_features", "fit_linear_baseline",
    "Episodes", "FlatBatch", "normalize_per_task",
    "discounted_returns", "gae",
    "MetaTRPOStep", "kl_to", "reinforce_loss", "surrogate_loss",
    "GaussianMLPPolicy", "Params", "gaussian_log_prob", "per_task",
    "GymSampler", "Sampler", "TwinSampler", "make_sampler",
    "TRPOStats", "conjugate_gradient", "flatten", "trpo_update", "unflatten",
    "MetaTRPO", "REFERENCE_NAV_KWARGS",
]
