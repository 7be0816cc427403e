"""rkmeta-rl: gradient-based meta-learning whose meta-update is a Runge-Kutta integrator (MAML-RK)."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["MetaTRPO", "MetaTRPOConfig", "MetaTrainer", "MetaTrainConfig", "FewShotConfig", "BaseMetaAlgorithm",
           "__version__"]

#: lazy exports: name -> module (importing the RL stack pulls in Gymnasium and MuJoCo, so only on first use)
_LAZY = {"MetaTRPO": "rkmeta_rl.rl.algorithm", "MetaTRPOConfig": "rkmeta_rl.rl.config",
         "MetaTrainer": "rkmeta_rl.supervised.trainer", "MetaTrainConfig": "rkmeta_rl.supervised.config",
         "FewShotConfig": "rkmeta_rl.supervised.config", "BaseMetaAlgorithm": "rkmeta_rl.common.base"}


def __getattr__(name: str) -> Any:
    """Lazy exports (``rkmeta_rl.MetaTRPO`` imports the RL stack on first use only)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rkmeta_rl' has no attribute {name!r}")
