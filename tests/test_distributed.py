"""Data-parallel meta-training on torch.distributed: helpers, equivalence with one process, failures.

The multi-process tests start two gloo processes on this machine (one thread each): the equivalence test
through ``torchrun --standalone`` (the real launcher), the failure tests with the torchrun environment variables
set by hand, so that no launcher tears the surviving rank down and the process group's own error handling
(closed connection, collective timeout) is what is tested.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from rkmeta_rl.distributed import DistInfo, all_reduce_mean, batch_slice, init_distributed, rank_seed, split_batch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_dist_worker.py")
sys.path.insert(0, HERE)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- helpers
def test_split_batch_sums_and_errors() -> None:
    for total in range(3, 12):
        for world in (1, 2, 3):
            counts = [split_batch(total, r, world) for r in range(world)]
            assert sum(counts) == total and max(counts) - min(counts) <= 1
            slices = [batch_slice(total, r, world) for r in range(world)]
            assert slices[0].start == 0 and slices[-1].stop == total
            assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    with pytest.raises(ValueError, match="cannot be split"):
        split_batch(1, 0, 2)
    assert split_batch(1, 1, 2, allow_empty=True) == 0
    with pytest.raises(ValueError):
        split_batch(4, 2, 2)


def test_rank_seed_and_single_process_defaults(monkeypatch) -> None:
    assert rank_seed(7, 0) == 7
    seeds = {rank_seed(s, r) for s in range(4) for r in range(4)}
    assert len(seeds) == 16  # no (seed, rank) collisions, unlike seed + rank
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo() and info.world_size == 1 and info.is_main and not info.distributed
    xs = [torch.randn(3), torch.randn(2, 2)]
    out = all_reduce_mean(xs, weight=5)
    assert all(torch.equal(a, b) for a, b in zip(xs, out))


# ---------------------------------------------------------------------------------------------- 2 processes
def test_two_ranks_match_one_process_on_the_same_tasks(tmp_path) -> None:
    """Two ranks with 3 + 2 of 5 tasks end two second-order meta-iterations with the parameters of one process
    with all 5; the split evaluation equals the one-process one; resume under torchrun is exact."""
    import _dist_worker

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER,
           "equiv", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    ref = _dist_worker.run_equiv(str(tmp_path / "ref"), DistInfo())
    for k in ref["params"]:
        # the ranks hold bitwise identical parameters, and match the one-process run to float tolerance
        assert torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]), k
        torch.testing.assert_close(ranks[0]["params"][k], ref["params"][k], rtol=0, atol=1e-6)
        for r in range(2):
            assert torch.equal(ranks[r]["resumed"][k], ranks[r]["straight"][k]), (r, k)
    # logged statistics are full-batch means too
    for s_dist, s_ref in zip(ranks[0]["stats"], ref["stats"]):
        assert s_dist["train/num_tasks"] == 5.0
        for key in ("train/query_loss_post", "train/support_loss_pre", "train/grad_norm"):
            assert s_dist[key] == pytest.approx(s_ref[key], rel=1e-5), key
    for key, arr in ref["eval"].items():
        for r in range(2):
            assert arr.shape == ranks[r]["eval"][key].shape == (7, 3)
            torch.testing.assert_close(torch.as_tensor(ranks[r]["eval"][key]), torch.as_tensor(arr),
                                       rtol=1e-5, atol=1e-6)
    # only rank 0 wrote the run directory; the checkpoint holds both ranks' task streams
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint_final.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["task_gens"]) == 2
    assert not torch.equal(ckpt["task_gens"][0], ckpt["task_gens"][1])
    assert (tmp_path / "equiv" / "progress.csv").is_file()
    print(f"equivalence test: {time.perf_counter() - t0:.1f} s")


def test_sigterm_to_one_rank_stops_all_together(tmp_path) -> None:
    """SIGTERM reaches rank 1 only: both ranks stop after the same iteration, rank 0 writes the checkpoint, and
    both exit with the SIGTERM code (143)."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, WORKER, "signal", str(tmp_path)], cwd=ROOT,
                              env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port, TEST_DIST_TIMEOUT="30"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 143 and f"rank {r} interrupted at 3" in out, out[-3000:]
    assert "SIGTERM received" in outs[0] and "SIGTERM received" not in outs[1]  # rank 0 logs it
    ckpt = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert ckpt["num_iterations"] == 3 and ckpt["world_size"] == 2


@pytest.mark.parametrize("mode", ["crash", "hang"])
def test_failed_rank_makes_the_other_fail_not_hang(tmp_path, mode) -> None:
    """Rank 1 raises (crash) or stops taking part (hang) after one meta-iteration: rank 0 must exit with an
    error, at once for a crash and within the collective timeout for a hang."""
    timeout = 10
    port = str(_free_port())
    procs = []
    t0 = time.perf_counter()
    try:
        for r in range(2):
            env = _env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       TEST_DIST_TIMEOUT=str(timeout))
            procs.append(subprocess.Popen([sys.executable, WORKER, mode, str(tmp_path)], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        try:
            out, _ = procs[0].communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 still running {time.perf_counter() - t0:.0f} s after start: it hangs")
        took = time.perf_counter() - t0
        assert "rank 0 ready" in out, out[-3000:]
        assert procs[0].returncode != 0, out[-3000:]
        assert "finished training without an error" not in out
        if mode == "crash":
            assert procs[1].wait(timeout=60) != 0
        else:  # gloo's collective timeout fired (not a launcher, not the test's own limit)
            assert "timed out" in out.lower(), out[-3000:]
        print(f"{mode}: rank 0 exited with {procs[0].returncode} after {took:.1f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
