"""Data-parallel MetaTRPO (RL half): two gloo processes equal one; devices; GPU check script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from rkmeta_rl.distributed import DistInfo
from rkmeta_rl.rl.algorithm import MetaTRPO, resolve_device

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_dist_rl_worker.py")
sys.path.insert(0, HERE)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def test_two_ranks_match_one_process_metatrpo(tmp_path) -> None:
    """Two ranks with 2 + 2 of 4 navigation tasks (same tasks and episodes as one process) end two second-order
    MetaTRPO iterations with one process's parameters; their logged statistics are full-batch means; a
    collective save + load under torchrun resumes exactly."""
    import _dist_rl_worker

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER,
           str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = _dist_rl_worker.run_equiv(str(ref_dir), DistInfo())
    assert [r["local_batch_size"] for r in ranks] == [2, 2] and ref["local_batch_size"] == 4
    for k in ref["params"]:
        assert torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]), k  # identical on every rank
        torch.testing.assert_close(ranks[0]["params"][k], ref["params"][k], rtol=0, atol=1e-5)
        assert not torch.equal(ref["params"][k], ref["straight"][k]) or k.startswith("b")  # it trained
        for r in range(2):
            assert torch.equal(ranks[r]["resumed"][k], ranks[r]["straight"][k]), (r, k)
            assert torch.equal(ranks[r]["straight"][k], ranks[0]["straight"][k]), (r, k)
    # iteration 1 agrees to float64 rounding; iteration 2 samples with parameters that differ at rounding level
    # through the float32 navigation twin, whose float32 rounding of the actions then differs now and then
    for it, (s_dist, s_ref) in enumerate(zip(ranks[0]["stats"], ref["stats"])):
        assert s_dist["train/step_accepted"] == s_ref["train/step_accepted"] == 1.0
        assert s_dist["train/ls_steps"] == s_ref["train/ls_steps"]
        for key in ("rollout/pre_return", "rollout/post_return", "rollout/pre_ep_len", "train/kl",
                    "train/surrogate_before", "train/grad_norm", "time/total_env_steps"):
            assert s_dist[key] == pytest.approx(s_ref[key], rel=1e-9 if it == 0 else 1e-4, abs=1e-9), (it, key)
            assert ranks[1]["stats"][it][key] == s_dist[key], (it, key)
    assert ranks[0]["num_timesteps"] == ref["num_timesteps"]
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rngs"]) == 2
    assert ckpt["rngs"][0]["numpy"] != ckpt["rngs"][1]["numpy"]  # each rank has its own stream
    print(f"distributed MetaTRPO test: {time.perf_counter() - t0:.1f} s")


def test_metatrpo_tensors_live_on_the_model_device(monkeypatch) -> None:
    """One iteration: episodes, flat batches, parameters, action-noise generator all on ``model.device``; a
    resume keeps the device; CUDA asked for without CUDA raises (no silent CPU fallback)."""
    model = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", meta_batch_size=2, fast_batch_size=2, horizon=10,
                     device="cpu", policy_kwargs={"hidden_sizes": (8,)})
    seen: list[torch.Tensor] = []
    real_sample = model.sampler.sample

    def sample(*a, **kw):  # type: ignore[no-untyped-def]
        eps = real_sample(*a, **kw)
        seen.extend(t for t in (eps.obs, eps.actions, eps.rewards, eps.masks, eps.log_probs))
        return eps

    real_step = model.meta_step.step

    def step(params, train, valid=None, reduce=None):  # type: ignore[no-untyped-def]
        for b in [*train, valid]:
            seen.extend((b.obs, b.actions, b.advantages, b.masks))
        return real_step(params, train, valid, reduce)

    monkeypatch.setattr(model.sampler, "sample", sample)
    monkeypatch.setattr(model.meta_step, "step", step)
    model.train_iteration()
    assert len(seen) == 5 * 2 + 4 * 2
    seen.extend(model.policy.params().values())
    assert all(t.device == model.device for t in seen), {str(t.device) for t in seen}
    assert model.generator.device == model.device
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")
    # a CPU generator initialises a policy on another device (here: the meta device), drawing the same values
    from rkmeta_rl.rl.policy import GaussianMLPPolicy
    a = GaussianMLPPolicy(2, 2, (4,), generator=torch.Generator().manual_seed(0))
    b = GaussianMLPPolicy(2, 2, (4,), generator=torch.Generator().manual_seed(0), device="meta")
    assert all(v.device.type == "meta" for v in b.params().values()) and a.w0.shape == b.w0.shape


def test_gpu_check_exits_zero_without_gpu() -> None:
    """``scripts/gpu_check.py`` exits 0 on a machine without CUDA, saying so in its JSON last line."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run scripts/gpu_check.py itself")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py")], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["cuda_available"] is False and "no CUDA" in last["message"]
