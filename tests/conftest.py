"""Shared test set-up: one torch thread per process (measured: two threads slow second-order MAML under load)."""

import os

import pytest
import torch

torch.set_num_threads(1)

#: The real Omniglot dataset shipped beside the repository (read-only).
OMNIGLOT_ROOT = os.environ.get(
    "RKMETA_OMNIGLOT", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "omniglot")
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
