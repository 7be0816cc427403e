"""``AdaptedPolicy``: the parameters :meth:`MetaTRPO.adapt` returns, usable wherever SB3 expects a model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

if TYPE_CHECKING:
    from .algorithm import MetaTRPO

__all__ = ["AdaptedPolicy"]


class AdaptedPolicy(dict):
    """Adapted policy parameters (a plain ``{name: tensor}`` mapping, shared layout) that also act.

    ``predict`` has SB3's signature, so ``stable_baselines3.common.evaluation.evaluate_policy(adapted, env)``
    scores the adapted policy; ``model.predict(obs, params=adapted)`` is the same call.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], model: "MetaTRPO") -> None:
        super().__init__(params)
        self.model = model

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
                ) -> tuple[np.ndarray, None]:
        """Action(s) of the adapted policy for ``observation``; ``(actions, None)``."""
        return self.model.predict(observation, state, episode_start, deterministic, params=self)
