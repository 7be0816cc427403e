"""``scripts/bench_fewshot.py``: chunk sizes in ``--paths`` and one tiny interleaved run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, load_script


def test_chunk_sizes_of_the_paths() -> None:
    chunk_size = load_script("bench_fewshot").chunk_size
    assert chunk_size("analytic", 32) is None        # the engine's default
    assert chunk_size("analytic:all", 32) == 32
    assert chunk_size("batched:4", 32) == 4
    for bad in ("loop:4", "analytic:0", "analytic:x"):
        with pytest.raises(ValueError):
            chunk_size(bad, 32)


def test_a_tiny_run_prints_every_variant_and_the_choice() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_fewshot.py"), "--random-images",
                          "--meta-batch", "4", "--queries", "1", "--filters", "8", "--iters", "1", "--warmup", "0",
                          "--paths", "loop,analytic,analytic:2", "--threads", "2", "--diagnostics", "both"],
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for variant in ("loop", "analytic", "analytic:2", "loop/nodiag", "analytic/nodiag", "analytic:2/nodiag"):
        assert res[f"{variant}_s_per_iter"] > 0 and res[f"{variant}_speedup_vs_loop"] > 0
    assert res["chosen"] == "analytic" and res["analytic_speedup_vs_loop"] > 0
    assert res["threads"] == 2
