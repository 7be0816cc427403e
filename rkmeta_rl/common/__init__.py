"""What every meta-training algorithm shares: the base class, typed configs, callbacks, run folders, errors."""

from ..errors import EXIT_CODES, CheckpointError, ConfigMismatchError, NonFiniteError, RunDirError, TrainingInterrupted
from .base import BaseMetaAlgorithm
from .callbacks import FunctionCallback, as_callback
from .config import BaseConfig, validate_method

__all__ = ["BaseMetaAlgorithm", "BaseConfig", "validate_method", "FunctionCallback", "as_callback",
           "NonFiniteError", "ConfigMismatchError", "CheckpointError", "RunDirError", "TrainingInterrupted",
           "EXIT_CODES"]
