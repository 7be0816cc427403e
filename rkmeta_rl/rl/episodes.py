"""A batch of episodes for a meta-batch of tasks.

Layout (as the reference MAML-RL ``BatchEpisodes``, with a leading task dimension)::

    obs         [T, H, B, obs_dim]   observation before step t
    actions     [T, H, B, act_dim]   action taken (unclipped, as sampled from the policy)
    rewards     [T, H, B]            reward of step t (0 on dead steps)
    masks       [T, H, B]            1 while the episode is alive at step t (the ending step included)
    log_probs   [T, H, B]            log-probability of the action under the sampling policy
    returns     [T, H, B]            discounted returns (after :meth:`Episodes.compute_advantages`)
    advantages  [T, H, B]            GAE advantages, optionally normalised per task

``T`` tasks, horizon ``H``, ``B`` trajectories per task. :meth:`Episodes.flat` gives ``[T, H * B, ...]`` views
for the per-task losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .baseline import LinearFeatureBaseline
from .gae import discounted_returns, gae

__all__ = ["Episodes", "FlatBatch", "normalize_per_task"]


def normalize_per_task(x: torch.Tensor, masks: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` per task over live steps (dims 1..), 0 on dead steps.

    The reference's ``weighted_normalize``: population standard deviation over the live steps.
    """
    dims = tuple(range(1, x.dim()))
    m = masks.to(x.dtype)
    n = m.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dims, keepdim=True) / n
    centred = (x - mean) * m
    std = torch.sqrt((centred * centred).sum(dims, keepdim=True) / n)
    return centred / (std + eps)


@dataclass
class Episodes:
    """Episodes of ``T`` tasks (see the module docstring for shapes)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    masks: torch.Tensor
    log_probs: torch.Tensor
    returns: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    tasks: list[Any] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        return int(self.obs.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.obs.shape[1])

    @property
    def num_traj(self) -> int:
        return int(self.obs.shape[2])

    @property
    def num_steps(self) -> int:
        """Number of live (environment) steps in the batch."""
        return int(self.masks.sum().item())

    def episode_returns(self) -> torch.Tensor:
        """Undiscounted return of every episode: ``[T, B]``."""
        return (self.rewards * self.masks).sum(1)

    def lengths(self) -> torch.Tensor:
        """Episode lengths: ``[T, B]``."""
        return self.masks.sum(1)

    def compute_advantages(self, baseline: LinearFeatureBaseline, gamma: float = 0.99, gae_lambda: float = 1.0,
                           normalize: bool = True) -> "Episodes":
        """Fill ``returns`` and ``advantages`` (in place; returns ``self``).

        The baseline is fitted per task on these episodes' discounted returns, as in the reference code; then
        GAE; then, with ``normalize``, per-task standardisation over live steps.
        """
        self.returns = discounted_returns(self.rewards, self.masks, gamma)
        values = baseline.fit_predict(self.obs, self.returns, self.masks)
        adv = gae(self.rewards, values, self.masks, gamma, gae_lambda)
        self.advantages = normalize_per_task(adv, self.masks) if normalize else adv
        return self

    def flat(self) -> "FlatBatch":
        """Per-task flattened views ``[T, H * B, ...]`` for the losses (advantages must be computed)."""
        if self.advantages is None:
            raise RuntimeError("compute_advantages() first")
        t, n = self.num_tasks, self.horizon * self.num_traj
        return FlatBatch(
            obs=self.obs.reshape(t, n, -1),
            actions=self.actions.reshape(t, n, -1),
            advantages=self.advantages.reshape(t, n),
            masks=self.masks.reshape(t, n),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Episodes":
        """A copy with float tensors moved / cast."""
        def cv(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device=device, dtype=dtype)
        return Episodes(cv(self.obs), cv(self.actions), cv(self.rewards), cv(self.masks), cv(self.log_probs),
                        cv(self.returns), cv(self.advantages), list(self.tasks))


@dataclass
class FlatBatch:
    """Loss inputs of ``T`` tasks with ``N`` steps each: ``obs [T, N, obs_dim]``, ``actions [T, N, act_dim]``,
    ``advantages [T, N]``, ``masks [T, N]``."""

    obs: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    masks: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return int(self.obs.shape[0])

    def masked_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Per-task mean of ``x [T, N]`` over live steps: ``[T]``."""
        return (x * self.masks).sum(1) / self.masks.sum(1).clamp_min(1.0)
