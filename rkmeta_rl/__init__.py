"""rkmeta-rl: gradient-based meta-learning whose meta-update is a Runge-Kutta integrator (MAML-RK)."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["MetaTRPO", "__version__"]


def __getattr__(name: str) -> Any:
    """Lazy exports: ``rkmeta_rl.MetaTRPO`` imports the RL stack (Gymnasium, SB3) on first use only."""
    if name == "MetaTRPO":
        from .rl.algorithm import MetaTRPO

        return MetaTRPO
    raise AttributeError(f"module 'rkmeta_rl' has no attribute {name!r}")
