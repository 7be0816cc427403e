"""Run folders that never lose or mix a run.

A fresh run refuses a run folder that already holds files, with the ``--resume`` hint (we chose refusal over
Stable-Baselines3's next free ``_N`` name: a run's folder stays the one its command names, so ``--resume`` and
evaluation scripts find it). ``--resume`` continues the run in its folder. :func:`check_run_dir` runs before
any work: a folder under a regular file, or one that cannot be created or written, is one clear error.

Every start writes ``config.json``: the resolved configuration, the package versions, and the git commit of
the source tree when there is one.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any, Mapping

from ..errors import RunDirError
from ..utils import write_json_atomic

__all__ = ["check_run_dir", "write_run_config", "package_versions", "git_commit"]


def check_run_dir(logdir: str, resume: bool) -> None:
    """Check that ``logdir`` can hold this run, without creating anything.

    Raises:
        RunDirError: a path component is a regular file; the nearest existing folder is not writable; or a
            fresh run (``resume=False``) names a folder that already holds files (hint: ``--resume``).
    """
    path = os.path.abspath(logdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"--logdir {logdir} is a file, not a folder")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise RunDirError(f"--logdir {logdir} cannot be created: {probe} is a regular file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"--logdir {logdir} cannot be written: {probe} is not writable")
    if not resume and os.path.isdir(path) and os.listdir(path):
        raise RunDirError(f"--logdir {logdir} already holds a run: continue it with --resume, or choose another "
                          "--logdir (a fresh run never writes into a used folder)")


def git_commit(folder: str | None = None) -> str | None:
    """The commit of the git checkout holding ``folder`` (default: this package), or ``None``."""
    folder = folder or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a run's numbers depend on."""
    import gymnasium
    import numpy
    import stable_baselines3
    import torch

    from .. import __version__

    return {"python": platform.python_version(), "rkmeta_rl": __version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "gymnasium": gymnasium.__version__,
            "stable_baselines3": stable_baselines3.__version__}


def write_run_config(logdir: str, algorithm: str, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None
                     ) -> str:
    """Write ``<logdir>/config.json`` (atomically): algorithm, resolved config, versions, git commit, command."""
    path = os.path.join(logdir, "config.json")
    write_json_atomic(path, {"algorithm": algorithm, "config": dict(config), **dict(extra or {}),
                             "versions": package_versions(), "git_commit": git_commit(), "argv": list(sys.argv)})
    return path
