"""``scripts/profile_fewshot.py`` end to end on a tiny meta-batch: its JSON line adds up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.parametrize("path", ["analytic", "batched"])
def test_profile_splits_the_iteration(path: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "profile_fewshot.py"), "--path", path,
                          "--meta-batch", "2", "--iters", "1", "--warmup", "0", "--top", "3"],
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["path"] == path and res["plain_s_per_iter"] > 0 and res["no_products_s_per_iter"] > 0
    assert res["products_s"] == pytest.approx(res["plain_s_per_iter"] - res["no_products_s_per_iter"], abs=2e-4)
    # the flop counter finds the products: 2 tasks of the paper's protocol, about 2 / 32 of its 9.3 GFLOP
    assert 0.2 < res["products_gflop"] < 1.0
    assert "bmm" in res["by_op_ms"] and len(res["top_ms"]) == 3
