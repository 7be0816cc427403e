"""``scripts/train_fewshot.py`` end to end: real Omniglot, a synthetic MiniImagenet, the time budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import OMNIGLOT_ROOT, load_script
from test_miniimagenet import _make_pickle_form

from rkmeta_rl.logger import read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_fewshot.py")


def run(args: list[str], timeout: int = 600) -> dict:
    proc = subprocess.run([sys.executable, SCRIPT, "--no-progress", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.isdir(OMNIGLOT_ROOT), reason="real Omniglot not found")
def test_omniglot_end_to_end(tmp_path) -> None:
    m = run(["--dataset", "omniglot", "--ways", "5", "--shots", "1", "--method", "ralston", "--data-root",
             OMNIGLOT_ROOT, "--iterations", "4", "--meta-batch-size", "2", "--eval-interval", "2",
             "--log-interval", "2", "--eval-tasks", "10", "--logdir", str(tmp_path)])
    for key in ("dataset", "ways", "shots", "method", "iterations", "accuracy", "accuracy_ci95", "seconds"):
        assert key in m, key
    assert m["dataset"] == "omniglot" and m["iterations"] == 4 and m["adapt_lr"] == pytest.approx(0.6)
    assert 0.0 <= m["accuracy"] <= 1.0 and len(m["accuracy_per_step"]) == 4  # 0..3 test steps
    scalars = read_scalars(str(tmp_path))
    assert {"train/query_loss_post", "eval/acc_1_step", "eval/acc_3_steps", "test/acc_3_steps"} <= set(scalars)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert "eval/figure" in acc.Tags()["images"]  # the episode image grid
    assert os.path.isfile(tmp_path / "episode.png")


def test_miniimagenet_pickle_form_and_time_budget(tmp_path) -> None:
    data = tmp_path / "mini"
    _make_pickle_form(data, val_name="validation")
    m = run(["--dataset", "miniimagenet", "--ways", "2", "--shots", "1", "--queries", "2", "--method", "heun",
             "--data-root", str(data), "--cache-dir", str(tmp_path / "cache"), "--iterations", "1000",
             "--time-budget", "0.001", "--eval-tasks", "4", "--eval-interval", "0", "--logdir", str(tmp_path / "run")])
    assert m["stopped_by_time_budget"] is True and 1 <= m["iterations"] < 1000
    assert m["dataset"] == "miniimagenet" and m["pool"] == "max" and m["filters"] == 32
    assert m["test_inner_steps"] == 10 and m["meta_batch_size"] == 4 and m["inner_lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("flags,msg", [
    (["--dataset", "miniimagenet"], "--data-root is required"),
    (["--data-root", "/nonexistent/omniglot"], "/nonexistent/omniglot"),
    (["--data-root", OMNIGLOT_ROOT, "--method", "rk4"], "one- and two-stage"),
    (["--data-root", OMNIGLOT_ROOT, "--ways", "0"], "ways"),
])
def test_bad_input_fails_with_message(tmp_path, flags, msg) -> None:
    mod = load_script("train_fewshot")
    with pytest.raises(SystemExit) as err:
        mod.main(["--no-progress", "--iterations", "1", "--logdir", str(tmp_path), *flags])
    assert msg in str(err.value)


def test_train_chunk_bounds_memory_and_keeps_the_meta_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train_chunk``: the meta-batch's tasks in programs of that many tasks; the same meta-gradient to rounding
    (compared before Adam, whose first step is ``lr * sign(g)`` and so would amplify rounding)."""
    import torch

    gpu_check = load_script("gpu_check")
    whole, chunked = gpu_check._paper_fewshot("cpu"), gpu_check._paper_fewshot("cpu", train_chunk=12)
    assert chunked.config.train_chunk == 12
    import rkmeta_rl.supervised.trainer as trainer_module

    seen: list[int | None] = []

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("chunk_size"))  # type: ignore[arg-type]
        return meta_gradient(*args, **kwargs)

    meta_gradient = trainer_module.meta_gradient
    monkeypatch.setattr(trainer_module, "meta_gradient", spy)
    data = whole.problem.sample_tasks(32, torch.Generator().manual_seed(0), 2, torch.device("cpu"))
    (ga, sa), (gb, sb) = whole._meta_gradient(data), chunked._meta_gradient(data)
    assert seen == [None, 12]
    assert sa["query_loss_post"] == pytest.approx(sb["query_loss_post"], rel=1e-5)
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=1e-4, atol=1e-6), k
    with pytest.raises(ValueError, match="train_chunk"):
        gpu_check._paper_fewshot("cpu", train_chunk=0)


def test_diagnostics_every_nth_iteration_log_their_mean_and_train_the_same(tmp_path) -> None:
    """``diagnostics_interval=4`` over 10 iterations logged every 8: the two forward-only diagnostics on iterations
    4 and 8 only, the first log row holding their mean, the last row (iterations 9-10) none; the losses the
    meta-gradient computes anyway every iteration, logged as the mean over all; the parameters after training bit
    for bit those of ``diagnostics_interval=1``. A one-stage method's query loss after adaptation is a diagnostic."""
    import torch

    from rkmeta_rl.logger import read_progress
    from rkmeta_rl.supervised.config import MetaTrainConfig
    from rkmeta_rl.supervised.fewshot_problem import FewShotProblem
    from rkmeta_rl.supervised.trainer import MetaTrainer

    gpu_check = load_script("gpu_check")

    def make(interval: int, name: str, method: str = "midpoint") -> MetaTrainer:
        problem = FewShotProblem("omniglot", gpu_check._random_split(12, 6, 0), gpu_check._random_split(6, 6, 1),
                                 ways=3, shots=1, queries=2, filters=6, pool="stride")
        config = MetaTrainConfig(method=method, iterations=10, meta_batch_size=4, inner_lr=0.4, log_interval=8,
                                 eval_interval=0, checkpoint_interval=100, diagnostics_interval=interval)
        return MetaTrainer(problem, config, logdir=str(tmp_path / name))

    def train(model: MetaTrainer) -> list[dict[str, float]]:
        seen: list[dict[str, float]] = []
        model.learn(callback=lambda m, stats: seen.append(dict(stats)) or True)
        return seen

    every, fourth = make(1, "every"), make(4, "fourth")
    seen_every, seen = train(every), train(fourth)
    for a, b in zip(every.params.values(), fourth.params.values()):
        assert torch.equal(a, b)
    extra = {"train/query_loss_pre", "train/support_loss_post"}
    for it, st in enumerate(seen, start=1):
        assert extra <= set(st) if it % 4 == 0 else not extra & set(st), it
        assert st["train/query_loss_post"] == seen_every[it - 1]["train/query_loss_post"]
    header, rows = read_progress(str(tmp_path / "fourth" / "progress.csv"))
    col = {k: header.index(k) for k in ("train/query_loss_pre", "train/support_loss_pre", "time/iterations")}
    assert [row[col["time/iterations"]] for row in rows] == ["8", "10"]
    mean_pre = (seen[3]["train/query_loss_pre"] + seen[7]["train/query_loss_pre"]) / 2
    assert float(rows[0][col["train/query_loss_pre"]]) == pytest.approx(mean_pre, rel=1e-6)
    assert rows[1][col["train/query_loss_pre"]] == ""  # no diagnostics in iterations 9-10
    mean_support = sum(st["train/support_loss_pre"] for st in seen[:8]) / 8
    assert float(rows[0][col["train/support_loss_pre"]]) == pytest.approx(mean_support, rel=1e-6)

    euler = make(2, "euler", method="euler")
    first, second = euler.train_iteration(), euler.train_iteration()
    assert "train/query_loss_post" not in first and "train/query_loss_post" in second
    with pytest.raises(ValueError, match="diagnostics_interval"):
        MetaTrainConfig(diagnostics_interval=0).validate()
