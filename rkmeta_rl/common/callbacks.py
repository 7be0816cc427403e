"""Callbacks: Stable-Baselines3's :class:`BaseCallback` protocol, once per meta-iteration.

:meth:`~rkmeta_rl.common.base.BaseMetaAlgorithm.learn` accepts an SB3 ``BaseCallback``
(``CheckpointCallback``, ``CallbackList``, your own subclass), a plain callable
``fn(model, stats) -> bool | None``, or a list of either (also inside a ``CallbackList``). ``on_step`` runs
once per meta-iteration, after the iteration's statistics are recorded and before the logger dumps them (what
a callback records lands in the same row); returning ``False`` stops training.
``callback.locals`` holds ``stats`` (the iteration's statistics) and ``iteration``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from stable_baselines3.common.callbacks import BaseCallback, CallbackList

__all__ = ["FunctionCallback", "MaybeCallback", "as_callback"]

#: What ``learn(callback=...)`` accepts.
MaybeCallback = BaseCallback | Callable[[Any, dict], Any] | Sequence[BaseCallback | Callable] | None


class FunctionCallback(BaseCallback):
    """A plain callable ``fn(model, stats) -> bool | None`` as a callback (``False`` stops training)."""

    def __init__(self, fn: Callable[[Any, dict], Any]) -> None:
        super().__init__()
        self.fn = fn

    def _on_step(self) -> bool:
        return self.fn(self.model, self.locals.get("stats", {})) is not False


class _NoCallback(BaseCallback):
    def _on_step(self) -> bool:
        return True


def as_callback(callback: MaybeCallback) -> BaseCallback:
    """Normalise what ``learn(callback=...)`` accepts into one SB3 :class:`BaseCallback`."""
    if callback is None:
        return _NoCallback()
    if isinstance(callback, CallbackList):  # plain callables inside an SB3 CallbackList are wrapped too
        callback.callbacks = [as_callback(c) for c in callback.callbacks]
        return callback
    if isinstance(callback, BaseCallback):
        return callback
    if isinstance(callback, (list, tuple)):
        return CallbackList([as_callback(c) for c in callback])
    if callable(callback):
        return FunctionCallback(callback)
    raise TypeError(f"callback must be an SB3 BaseCallback, a callable fn(model, stats) or a list of them, got "
                    f"{type(callback).__name__}")
