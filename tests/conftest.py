"""Shared test set-up: one torch thread per process (measured: two threads slow second-order MAML under load), and
no automatic ``torch.compile`` (``RKMETA_COMPILE=0``, inherited by the commands tests start): tens of seconds per
compiled program would multiply the suite's time; ``tests/test_autocompile.py`` turns it back on where it tests it.

Real Omniglot is found through ``$RKMETA_OMNIGLOT`` only (a folder holding ``images_background/`` and
``images_evaluation/``; ``.ci/run`` sets it when CI has a copy). Tests that need it skip when it is absent.
"""

import importlib.util
import os
import sys
from types import ModuleType

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the commands tests start: one thread each too
os.environ.setdefault("RKMETA_COMPILE", "0")

#: The real Omniglot dataset (read-only), from ``$RKMETA_OMNIGLOT``; empty when unset.
OMNIGLOT_ROOT: str = os.environ.get("RKMETA_OMNIGLOT", "")
#: Whether that folder holds both Omniglot subsets.
HAVE_OMNIGLOT: bool = bool(OMNIGLOT_ROOT) and all(
    os.path.isdir(os.path.join(OMNIGLOT_ROOT, s)) for s in ("images_background", "images_evaluation"))
#: Skip reason for tests that need the real data.
NO_OMNIGLOT_REASON = ("real Omniglot not available: set RKMETA_OMNIGLOT to a folder holding images_background/ and "
                      "images_evaluation/ (get it with: python -m rkmeta_rl.data omniglot)")
#: Marker for tests that need the real data.
needs_omniglot = pytest.mark.skipif(not HAVE_OMNIGLOT, reason=NO_OMNIGLOT_REASON)


#: The repository's root (the folder holding ``scripts/``).
ROOT: str = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module, registered in ``sys.modules`` (its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
