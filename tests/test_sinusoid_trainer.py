"""The supervised meta-trainer on sinusoid regression: logging, exact resume, atomic checkpoints, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import load_script

from rkmeta_rl.checkpoint import LATEST, load_checkpoint, save_checkpoint
from rkmeta_rl.logger import read_progress, read_scalars
from rkmeta_rl.supervised.sinusoid import SinusoidTasks
from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
from rkmeta_rl.supervised.trainer import MetaTrainConfig, MetaTrainer, NonFiniteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(**kw) -> MetaTrainConfig:
    base = dict(method="ralston", iterations=30, meta_batch_size=4, log_interval=5, eval_interval=10,
                eval_tasks=8, final_eval_tasks=20, checkpoint_interval=10, device="cpu", test_inner_steps=3)
    base.update(kw)
    return MetaTrainConfig(**base)


def test_sinusoid_tasks_shapes_and_ranges() -> None:
    tasks = SinusoidTasks()
    d = tasks.sample(7, torch.Generator().manual_seed(0))
    assert d["xs"].shape == (7, 10, 1) and d["xq"].shape == (7, 10, 1)
    assert d["xs"].abs().max() <= 5 and (d["amp"] >= 0.1).all() and (d["amp"] <= 5).all()
    assert (d["phase"] >= 0).all() and (d["phase"] <= torch.pi).all()
    torch.testing.assert_close(d["ys"], d["amp"][:, None, None] * torch.sin(d["xs"] - d["phase"][:, None, None]))
    d4 = tasks.sample(3, torch.Generator().manual_seed(0), stages=4)
    assert len(d4) == 4 and all(torch.equal(s["amp"], d4[0]["amp"]) for s in d4)
    assert not torch.equal(d4[0]["xs"], d4[1]["xs"])


def test_train_logs_to_tensorboard_and_csv(tmp_path) -> None:
    tr = MetaTrainer(SinusoidProblem(), cfg(), logdir=str(tmp_path))
    tr.learn(progress_bar=False)
    res = tr.final_evaluation()
    metrics = tr.write_metrics({"mse_1_step": res["mse"]["mean"][1]})
    tr.close()
    scalars = read_scalars(str(tmp_path))
    for key in ("train/support_loss_pre", "train/query_loss_post", "train/grad_norm", "eval/mse_1_step",
                "eval/mse_3_steps", "time/it_per_s", "test/mse_1_step"):
        assert key in scalars, key
    assert [s for s, _ in scalars["train/query_loss_post"]] == [5, 10, 15, 20, 25, 30]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert "eval/figure" in acc.Tags()["images"]  # the adaptation figure landed as an image
    assert os.path.isfile(tmp_path / "progress.csv") and os.path.isfile(tmp_path / "checkpoint_final.pt")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["method"] == "ralston" and on_disk["iterations"] == 30 and "seconds" in on_disk
    assert metrics["mse_1_step"] == on_disk["mse_1_step"]
    assert len(res["mse"]["mean"]) == 4 and all(m > 0 for m in res["mse"]["mean"])


def _final_params(tr: MetaTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.params.items()}


@pytest.mark.parametrize("method", ["heun", "kutta3"])
def test_resume_is_exact(tmp_path, method) -> None:
    ref = MetaTrainer(SinusoidProblem(), cfg(method=method, iterations=20), logdir=str(tmp_path / "ref"))
    ref.learn(progress_bar=False)
    ref.close()
    # a run that crashes at iteration 13 (checkpoint at 10), then resumes
    class Crash(RuntimeError):
        pass

    def crash(tr, stats):
        if tr.num_iterations == 13:
            raise Crash()

    a = MetaTrainer(SinusoidProblem(), cfg(method=method, iterations=20), logdir=str(tmp_path / "a"))
    with pytest.raises(Crash):
        a.learn(callback=crash, progress_bar=False)
    a.close()
    assert load_checkpoint(str(tmp_path / "a" / LATEST))["num_iterations"] == 10
    b = MetaTrainer(SinusoidProblem(), cfg(method=method, iterations=20), logdir=str(tmp_path / "a"), resume=True)
    assert b.iteration == 10
    b.learn(progress_bar=False)
    b.close()
    for k, v in _final_params(ref).items():
        assert torch.equal(v, b.params[k]), k
    # one continuous progress.csv: iterations 5, 10 before the crash (15 was never dumped), then 15, 20
    header, rows = read_progress(str(tmp_path / "a" / "progress.csv"))
    assert [int(float(r[header.index("time/iterations")])) for r in rows] == [5, 10, 15, 20]
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith("progress.before")]


def test_resume_refuses_other_settings(tmp_path) -> None:
    MetaTrainer(SinusoidProblem(), cfg(iterations=10), logdir=str(tmp_path)).learn(progress_bar=False).close()
    with pytest.raises(ValueError, match="method"):
        MetaTrainer(SinusoidProblem(), cfg(method="heun"), logdir=str(tmp_path), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        MetaTrainer(SinusoidProblem(), cfg(), logdir=str(tmp_path / "empty"), resume=True)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / LATEST)
    save_checkpoint(path, {"iteration": 1, "x": torch.ones(3)})
    save_checkpoint(path, {"iteration": 1, "x": torch.ones(3)})  # the first one becomes the previous one

    def broken_save(obj, fh, *a, **k):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1  # the previous checkpoint is intact
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


class ExplodingProblem(SinusoidProblem):
    """Targets blow up to inf after a few tasks have been drawn."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def sample_tasks(self, num_tasks, generator, stages, device, split="train"):
        d = super().sample_tasks(num_tasks, generator, stages, device, split)
        if split == "train":
            self.calls += 1
            if self.calls > 12:
                d["ys"] = d["ys"] * float("inf")
        return d


def test_non_finite_stops_with_iteration_and_checkpoint(tmp_path) -> None:
    tr = MetaTrainer(ExplodingProblem(), cfg(eval_interval=0), logdir=str(tmp_path))
    with pytest.raises(NonFiniteError, match=r"iteration 13.*checkpoint_latest\.pt"):
        tr.learn(progress_bar=False)
    assert load_checkpoint(str(tmp_path / LATEST))["num_iterations"] == 10


@pytest.mark.parametrize("field,value,msg", [
    ("method", "rk45", "unknown RK method"), ("inner_lr", -0.1, "inner_lr"), ("meta_batch_size", 0, "meta_batch"),
    ("iterations", 2.5, "iterations"), ("step_rule", "x", "step_rule"), ("meta_lr", float("nan"), "meta_lr"),
])
def test_config_validation(field, value, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        cfg(**{field: value}).validate()


@pytest.mark.parametrize("flags,msg", [
    (["--method", "rk45"], "unknown RK method"), (["--inner-lr", "-1"], "--inner-lr must"),
    (["--meta-batch-size", "0"], "--meta-batch-size must"),
])
def test_cli_bad_flags_fail_fast(tmp_path, flags, msg) -> None:
    with pytest.raises(SystemExit) as err:
        load_script("train_sinusoid").main([*flags, "--logdir", str(tmp_path)])
    assert msg in str(err.value)
    assert not os.path.exists(tmp_path / "progress.csv")


def test_cli_end_to_end(tmp_path) -> None:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train_sinusoid.py"), "--method", "heun",
                           "--iterations", "20", "--eval-tasks", "10", "--no-compile", "--no-progress",
                           "--logdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("method", "iterations", "mse_1_step", "mse_1_step_ci95", "mse_10_steps", "seconds"):
        assert key in last
    assert last["method"] == "heun" and last["iterations"] == 20 and last["adapt_lr"] == pytest.approx(0.02)
    assert os.path.isfile(tmp_path / "adaptation.png")
