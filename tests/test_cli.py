"""The training commands: flags generated from the configs, presets, resume refusals naming the setting,
one-line errors before any work, SIGTERM with a real signal to a real process, then an exact ``--resume``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rkmeta_rl.cli import fewshot, locomotion, nav, sinusoid
from rkmeta_rl.cli.flags import FIELD_HELP, flag_name
from rkmeta_rl.presets import FEWSHOT, LOCOMOTION, NAV, SINUSOID, fewshot_preset
from rkmeta_rl.rl.config import MetaTRPOConfig
from rkmeta_rl.supervised.config import FewShotConfig, MetaTrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAV_TINY = ["--config", "reference", "--meta-batch-size", "2", "--fast-batch-size", "2", "--horizon", "10",
            "--hidden-sizes", "8", "--no-progress", "--figure-interval", "0", "--device", "cpu"]
SIN_TINY = ["--meta-batch-size", "3", "--no-compile", "--eval-tasks", "4", "--log-interval", "5",
            "--eval-interval", "0", "--checkpoint-interval", "5", "--test-inner-steps", "2", "--no-progress",
            "--device", "cpu"]

#: (command, its config class, fields deliberately without a flag)
COMMANDS = [(nav, MetaTRPOConfig, {"env", "policy_kwargs"}), (locomotion, MetaTRPOConfig, {"policy_kwargs"}),
            (sinusoid, MetaTrainConfig, set()), (fewshot, FewShotConfig, set())]


@pytest.mark.parametrize("cmd,cls,without", COMMANDS, ids=lambda x: getattr(x, "__name__", ""))
def test_flags_are_the_config_fields_and_all_have_help(cmd, cls, without) -> None:
    parser: argparse.ArgumentParser = cmd._parser()[0]
    flags = {opt for a in parser._actions for opt in a.option_strings}
    for f in dataclasses.fields(cls):
        assert f.name in FIELD_HELP, f.name
        assert (flag_name(f.name) in flags) != (f.name in without), f.name
    for action in parser._actions:
        assert action.help, action.option_strings
    text = parser.format_help()
    assert "(default: 0.99, from --config" in text.replace("\n", " ").replace("  ", " ") or cls is not MetaTRPOConfig


def test_presets() -> None:
    assert NAV["paper"] == NAV["seed"] and NAV["seed"].inner_lr == 0.16
    assert NAV["reference"].policy_kwargs == {"hidden_sizes": (64, 64), "activation": "tanh"}
    assert SINUSOID["paper"].iterations == 100_000 and SINUSOID["default"].iterations == 70_000
    assert SINUSOID["paper"].step_rule == "fixed" and SINUSOID["default"].step_rule == "tableau"
    p = FEWSHOT["paper-omniglot-5w1s"]
    assert (p.iterations, p.queries, p.split_seed, p.test_inner_steps, p.inner_lr, p.meta_batch_size,
            p.final_eval_tasks) == (30_000, 1, None, 3, 0.4, 32, 600)
    p = FEWSHOT["paper-omniglot-20w5s"]
    assert (p.iterations, p.queries, p.test_inner_steps, p.inner_lr, p.meta_batch_size) == (90_000, 5, 5, 0.1, 16)
    assert FEWSHOT["paper-omniglot-20w1s"].iterations == 50_000
    m = FEWSHOT["paper-miniimagenet-5w5s"]
    assert (m.filters, m.pool, m.meta_batch_size, m.inner_steps, m.inner_lr, m.queries, m.test_inner_steps,
            m.iterations) == (32, "max", 2, 5, 0.01, 15, 10, 90_000)
    assert fewshot_preset("maml", "omniglot", 5, 1).queries == 15  # today's default stays available
    for preset in [*NAV.values(), *LOCOMOTION.values(), *SINUSOID.values(), *FEWSHOT.values()]:
        preset.validate()


# ---- resume refusals (before any work), one-line errors -------------------------------------------------------
def _refused(main, argv: list[str], *needles: str) -> None:
    with pytest.raises(SystemExit) as err:
        main(argv)
    msg = str(err.value)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_nav_resume_with_a_changed_step_rule_is_refused(tmp_path) -> None:
    nav.main([*NAV_TINY, "--iterations", "1", "--logdir", str(tmp_path)])
    before = (tmp_path / "progress.csv").read_bytes()
    _refused(nav.main, [*NAV_TINY, "--iterations", "2", "--step-rule", "fixed", "--logdir", str(tmp_path),
                        "--resume"], "step_rule='tableau'", "step_rule='fixed'")
    _refused(nav.main, [*NAV_TINY, "--iterations", "2", "--inner-steps", "2", "--logdir", str(tmp_path),
                        "--resume"], "inner_steps")
    _refused(nav.main, [*NAV_TINY, "--iterations", "2", "--logdir", str(tmp_path)], "--resume")  # not a fresh run
    assert (tmp_path / "progress.csv").read_bytes() == before


def test_sinusoid_resume_with_a_changed_meta_lr_is_refused(tmp_path) -> None:
    sinusoid.main([*SIN_TINY, "--iterations", "5", "--logdir", str(tmp_path)])
    _refused(sinusoid.main, [*SIN_TINY, "--iterations", "10", "--meta-lr", "0.5", "--logdir", str(tmp_path),
                             "--resume"], "meta_lr=0.001", "meta_lr=0.5")


def test_fewshot_resume_with_changed_shots_or_ways_is_refused(tmp_path) -> None:
    from test_miniimagenet import _make_pickle_form

    _make_pickle_form(tmp_path / "mini", val_name="validation")
    flags = ["--dataset", "miniimagenet", "--data-root", str(tmp_path / "mini"), "--cache-dir",
             str(tmp_path / "cache"), "--ways", "2", "--shots", "1", "--queries", "1", "--filters", "4",
             "--eval-tasks", "2", "--eval-interval", "0", "--meta-batch-size", "2", "--inner-steps", "1",
             "--test-inner-steps", "1", "--no-progress", "--device", "cpu", "--logdir", str(tmp_path / "run")]
    fewshot.main([*flags, "--iterations", "1"])
    _refused(fewshot.main, [*flags, "--iterations", "2", "--shots", "2", "--resume"], "shots=1", "shots=2")
    _refused(fewshot.main, [*flags, "--iterations", "2", "--ways", "3", "--resume"], "ways")


def test_resume_of_another_commands_run_is_refused_as_such(tmp_path) -> None:
    sinusoid.main([*SIN_TINY, "--iterations", "5", "--logdir", str(tmp_path)])
    _refused(nav.main, [*NAV_TINY, "--iterations", "2", "--logdir", str(tmp_path), "--resume"],
             "is a MetaTrainer checkpoint, not a MetaTRPO one")


@pytest.mark.parametrize("main,argv,needle", [
    (nav.main, ["--device", "tpu"], "'tpu'"),
    (nav.main, ["--gamma", "2.0"], "gamma"),
    (nav.main, ["--gae-lambda", "1.5"], "--gae-lambda must"),
    (sinusoid.main, ["--eval-tasks", "0"], "--eval-tasks must"),  # the flag, not the config field
    (sinusoid.main, ["--meta-batch-size", "0"], "--meta-batch-size must"),
    (sinusoid.main, ["--device", "tpu"], "'tpu'"),
    (fewshot.main, ["--filters", "0"], "filters"),
    (fewshot.main, ["--filters", "-1"], "filters"),
    (locomotion.main, ["--env", "CartPole-v1"], "Box"),
])
def test_bad_input_is_one_line_before_work(tmp_path, main, argv, needle) -> None:
    _refused(main, [*argv, "--no-progress", "--logdir", str(tmp_path / "run")], needle)
    assert not os.path.exists(tmp_path / "run")


def test_logdir_under_a_regular_file(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    _refused(sinusoid.main, [*SIN_TINY, "--logdir", str(tmp_path / "f" / "run")], "regular file")


def test_env_module_colon_id(tmp_path) -> None:
    m = locomotion.main(["--env", "test_plugin_family:testfam/MassPendulum-v0", "--method", "midpoint",
                         "--iterations", "1", "--meta-batch-size", "2", "--fast-batch-size", "2", "--horizon", "5",
                         "--hidden-sizes", "8", "--no-progress", "--logdir", str(tmp_path)])
    assert m["env"] == "testfam/MassPendulum-v0" and m["iterations"] == 1


# ---- preemption ----------------------------------------------------------------------------------------------
def _final_params(logdir) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(logdir, "checkpoint_final.pt"), weights_only=True)["params"]


def test_sigterm_checkpoints_exits_143_and_resume_is_exact(tmp_path) -> None:
    """A real SIGTERM to a real training process: it finishes the iteration, checkpoints, says so and exits 143;
    ``--resume`` then ends bit for bit where an uninterrupted run ends."""
    n = "120"
    argv = [*SIN_TINY, "--method", "heun", "--checkpoint-interval", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train_sinusoid.py"), *argv,
                             "--iterations", n, "--logdir", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint_latest.pt").exists():  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM received" in err and "checkpoint written" in err and "Traceback" not in err
    stopped = torch.load(run / "checkpoint_latest.pt", weights_only=True)["num_iterations"]
    assert 10 <= stopped < int(n) and not (run / "checkpoint_final.pt").exists()
    sinusoid.main([*argv, "--iterations", n, "--logdir", str(run), "--resume"])
    sinusoid.main([*argv, "--iterations", n, "--logdir", str(tmp_path / "ref")])
    ref, got = _final_params(tmp_path / "ref"), _final_params(run)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] == int(n)
