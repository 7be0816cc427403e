"""Where datasets live on disk: one default data root for every script and the library."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "default_data_root"]

#: Environment variable that overrides the default data root.
DATA_ENV = "RKMETA_DATA"


def default_data_root() -> Path:
    """The folder that holds the datasets (``<root>/omniglot/...``); not created here.

    ``$RKMETA_DATA`` when set, else ``$XDG_CACHE_HOME/rkmeta_rl/data``, else ``~/.cache/rkmeta_rl/data``.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rkmeta_rl" / "data"
