"""The shared training stack on both trainers: SB3 callbacks, ``evaluate_policy``, parameters and seeding,
run folders, ``config.json``, hparams, continuous ``progress.csv``, verified checkpoints, the non-finite stop."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.evaluation import evaluate_policy

from rkmeta_rl import MetaTRPO
from rkmeta_rl.checkpoint import FINAL, LATEST, PREVIOUS, load_checkpoint, load_latest
from rkmeta_rl.envs.protocol import TaskFamilyError
from rkmeta_rl.errors import CheckpointError, ConfigMismatchError, NonFiniteError, RunDirError
from rkmeta_rl.logger import read_progress, read_scalars
from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
from rkmeta_rl.supervised.trainer import MetaTrainConfig, MetaTrainer
from rkmeta_rl.utils import resolve_device

SMALL = dict(meta_batch_size=2, fast_batch_size=2, horizon=10, device="cpu", policy_kwargs={"hidden_sizes": (8,)})


def _trpo(**kw) -> MetaTRPO:
    return MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", **{**SMALL, **kw})


def _sin(logdir=None, resume=False, **kw) -> MetaTrainer:
    base = dict(method="ralston", iterations=20, meta_batch_size=3, log_interval=5, eval_interval=0,
                final_eval_tasks=4, checkpoint_interval=10, device="cpu", test_inner_steps=2, path="vmap")
    base.update(kw)
    return MetaTrainer(SinusoidProblem(), MetaTrainConfig(**base), logdir=None if logdir is None else str(logdir),
                       resume=resume)


TRAINERS = {"metatrpo": lambda: _trpo(), "supervised": lambda: _sin()}


# ---- SB3 callbacks ------------------------------------------------------------------------------------------
class StopAt(BaseCallback):
    """Stops training after ``n`` meta-iterations; counts the hooks it saw."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.started, self.ended, self.seen = n, 0, 0, []

    def _on_training_start(self) -> None:
        self.started += 1

    def _on_step(self) -> bool:
        self.seen.append((self.model.num_iterations, dict(self.locals["stats"])))
        return self.model.num_iterations < self.n

    def _on_training_end(self) -> None:
        self.ended += 1


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_custom_callback_stops_once_per_iteration(kind) -> None:
    model = TRAINERS[kind]()
    cb = StopAt(3)
    model.learn(10, callback=cb)
    assert model.num_iterations == 3 and cb.n_calls == 3 and [it for it, _ in cb.seen] == [1, 2, 3]
    assert cb.started == 1 and cb.ended == 1 and model.stopped_by == "callback"
    assert all(cb.seen[0][1]) and cb.num_timesteps == model.num_timesteps


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_checkpoint_callback_and_callback_list_write_loadable_files(kind, tmp_path) -> None:
    model = TRAINERS[kind]()
    stop, seen = StopAt(4), []
    model.learn(10, callback=CallbackList([CheckpointCallback(2, str(tmp_path), name_prefix="m"), stop,
                                           lambda m, s: seen.append(m.num_iterations)]))
    assert model.num_iterations == 4 and seen == [1, 2, 3, 4]
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.startswith("m_") for f in files)
    latest = tmp_path / f"m_{model.num_timesteps}_steps.zip"
    if kind == "metatrpo":
        loaded = MetaTRPO.load(str(latest))
    else:
        loaded = MetaTrainer.load(str(latest), SinusoidProblem())
    assert loaded.num_iterations == 4
    for k, v in model.get_parameters().items():
        assert torch.equal(v, loaded.get_parameters()[k]), k


def test_callback_type_error() -> None:
    with pytest.raises(TypeError, match="callback must be"):
        _sin().learn(1, callback=42)  # type: ignore[arg-type]


# ---- SB3's evaluate_policy, parameters, seeding --------------------------------------------------------------
def test_evaluate_policy_on_the_meta_policy_and_an_adapted_one() -> None:
    model = _trpo(seed=2)
    env = gym.make("rkmeta/Navigation2D-v0", max_episode_steps=10)
    mean, std = evaluate_policy(model, env, n_eval_episodes=3, warn=False)
    assert np.isfinite(mean) and mean < 0 and std >= 0
    task = model.sampler.sample_tasks(1, np.random.default_rng(0))[0]
    adapted = model.adapt(task, num_steps=1, generator=torch.Generator().manual_seed(0))
    env.reset(options={"task": task})
    rewards, lengths = evaluate_policy(adapted, env, n_eval_episodes=2, deterministic=True, warn=False,
                                       return_episode_rewards=True)
    assert len(rewards) == 2 and all(n == 10 for n in lengths)
    obs = np.zeros((4, 2), np.float32)
    np.testing.assert_array_equal(adapted.predict(obs, deterministic=True)[0],
                                  model.predict(obs, deterministic=True, params=adapted)[0])
    # predicting never touches the training streams
    state = model.rng_state()
    model.predict(obs)
    assert torch.equal(state["torch"], model.rng_state()["torch"])


@pytest.mark.parametrize("kind", sorted(TRAINERS))
def test_get_set_parameters_and_set_random_seed(kind) -> None:
    a, b = TRAINERS[kind](), TRAINERS[kind]()
    a.learn(1)
    b.set_parameters(a.get_parameters())
    assert all(torch.equal(v, b.get_parameters()[k]) for k, v in a.get_parameters().items())
    with pytest.raises(ValueError, match="expected parameters"):
        b.set_parameters({"nope": torch.zeros(1)})
    # same parameters and same reseeded streams: the next iteration sees the same tasks and episodes
    a.set_random_seed(7)
    b.set_random_seed(7)
    sa, sb = a.train_iteration(), b.train_iteration()
    assert {k: v for k, v in sa.items() if not k.startswith("time/")} == \
        {k: v for k, v in sb.items() if not k.startswith("time/")}


# ---- validation, the non-finite stop ------------------------------------------------------------------------
@pytest.mark.parametrize("kw,msg", [({"gamma": 2.0}, "gamma"), ({"gae_lambda": 0.0}, "gae_lambda"),
                                    ({"device": "tpu"}, "device"), ({"method": "rk4"}, "one- and two-stage"),
                                    ({"ls_backtrack_ratio": 1.0}, "ls_backtrack_ratio")])
def test_metatrpo_settings_refused_in_one_line(kw, msg) -> None:
    with pytest.raises(ValueError, match=msg) as err:
        _trpo(**kw)
    assert "\n" not in str(err.value)


def test_one_device_resolver() -> None:
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_non_box_family_refused_before_work() -> None:
    with pytest.raises(TaskFamilyError, match="Box"):
        MetaTRPO("MlpPolicy", "CartPole-v1", **SMALL)


def test_library_learn_stops_on_non_finite(monkeypatch) -> None:
    model = _trpo()
    real = model.train_iteration

    def bad() -> dict[str, float]:
        stats = real()
        if model.num_iterations == 2:
            stats["rollout/post_return"] = float("nan")
        return stats

    monkeypatch.setattr(model, "train_iteration", bad)
    with pytest.raises(NonFiniteError, match=r"rollout/post_return at iteration 2"):
        model.learn(5)


# ---- run folders ---------------------------------------------------------------------------------------------
def _snapshot(folder) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(r, f), folder): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(folder) for f in fs}


def test_second_fresh_run_leaves_the_first_intact(tmp_path) -> None:
    _sin(tmp_path / "run").learn().close()
    before = _snapshot(tmp_path / "run")
    assert {"config.json", "progress.csv", LATEST, FINAL} <= set(before)
    with pytest.raises(RunDirError, match="--resume"):
        _sin(tmp_path / "run", method="heun")
    with pytest.raises(RunDirError, match="--resume"):
        _trpo(logdir=str(tmp_path / "run"))
    assert _snapshot(tmp_path / "run") == before


def test_run_folder_under_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="regular file"):
        _sin(tmp_path / "file" / "run")


def test_config_json_and_hparams(tmp_path) -> None:
    tr = _sin(tmp_path)
    tr.learn()
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["algorithm"] == "MetaTrainer" and conf["config"]["method"] == "ralston"
    assert conf["config"] == tr.config.to_dict() and "torch" in conf["versions"]
    assert "git_commit" in conf
    tr.write_metrics({"mse_1_step": 0.25})
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    assert content, "no hparams in the event file"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {h.name for h in experiment.hparam_infos} >= {"method", "inner_lr", "meta_batch_size"}
    assert "final/mse_1_step" in {m.name.tag for m in experiment.metric_infos}
    assert read_scalars(str(tmp_path))["final/mse_1_step"] == [(20, 0.25)]


# ---- resume: comparison, continuity, damaged checkpoints -----------------------------------------------------
def test_resume_refuses_any_training_setting(tmp_path) -> None:
    _sin(tmp_path).learn().close()
    for kw, name in (({"meta_lr": 0.5}, "meta_lr"), ({"step_rule": "fixed"}, "step_rule"),
                     ({"first_order": True}, "first_order"), ({"test_inner_steps": 3}, "test_inner_steps")):
        with pytest.raises(ConfigMismatchError, match=name):
            _sin(tmp_path, resume=True, iterations=30, **kw)
    tr = _sin(tmp_path, resume=True, iterations=30, log_interval=10, checkpoint_interval=5, threads=1)
    assert tr.num_iterations == 20  # the may-change fields were accepted


def test_library_load_refuses_training_setting_changes(tmp_path) -> None:
    model = _trpo()
    model.learn(1)
    model.save(str(tmp_path / "m.pt"))
    with pytest.raises(ConfigMismatchError, match=r"step_rule='tableau'.*step_rule='fixed'"):
        MetaTRPO.load(str(tmp_path / "m.pt"), step_rule="fixed")
    assert MetaTRPO.load(str(tmp_path / "m.pt"), num_workers=1, iterations=50).num_iterations == 1


def test_progress_is_continuous_when_resuming_from_an_older_checkpoint(tmp_path) -> None:
    ref = _sin(tmp_path / "ref")
    ref.learn()
    ref.close()
    run = tmp_path / "run"
    _sin(run).learn().close()
    # lose the last checkpoints: the run resumes from iteration 10 although the log reached 20
    os.remove(run / LATEST)
    os.remove(run / FINAL)
    tr = _sin(run, resume=True)
    assert tr.num_iterations == 10
    tr.learn()
    tr.close()
    header, rows = read_progress(str(run / "progress.csv"))
    assert [int(float(r[header.index("time/iterations")])) for r in rows] == [5, 10, 15, 20]
    scalars = read_scalars(str(run))
    assert [s for s, _ in scalars["train/query_loss_post"]] == [5, 10, 15, 20]
    for k, v in ref.get_parameters().items():
        assert torch.equal(v, tr.get_parameters()[k]), k


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path) -> None:
    _sin(tmp_path, iterations=20, checkpoint_interval=5).learn().close()
    latest = tmp_path / LATEST
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # truncated
    os.remove(tmp_path / FINAL)
    with pytest.warns(RuntimeWarning, match=r"checkpoint_latest\.pt"):
        path, state = load_latest(str(tmp_path))
    assert path.endswith(PREVIOUS) and state["num_iterations"] == 15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = _sin(tmp_path, resume=True, iterations=25)
    assert tr.num_iterations == 15
    # every copy damaged: one clear error naming them
    prev = tmp_path / PREVIOUS
    prev.write_bytes(prev.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*checkpoint_latest\.pt.*checksum"):
        load_latest(str(tmp_path))


def test_load_says_what_kind_of_file_it_got(tmp_path) -> None:
    tr = _sin(tmp_path / "s")
    tr.learn(2)
    tr.save(str(tmp_path / "sup.pt"))
    with pytest.raises(CheckpointError, match="is a MetaTrainer checkpoint, not a MetaTRPO one"):
        MetaTRPO.load(str(tmp_path / "sup.pt"))
    torch.save({"a": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an rkmeta_rl checkpoint"):
        MetaTRPO.load(str(tmp_path / "plain.pt"))
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.pt is not a readable checkpoint"):
        MetaTRPO.load(str(tmp_path / "text.pt"))
    shutil.copy(tmp_path / "sup.pt", tmp_path / "cut.pt")
    with open(tmp_path / "cut.pt", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(CheckpointError, match=r"cut\.pt"):
        load_checkpoint(str(tmp_path / "cut.pt"))


# ---- a new algorithm is one module ----------------------------------------------------------------------------
from dataclasses import dataclass  # noqa: E402

from rkmeta_rl.common import BaseConfig, BaseMetaAlgorithm  # noqa: E402


@dataclass
class ToyConfig(BaseConfig):
    step: float = 0.5


class ToyAlgorithm(BaseMetaAlgorithm):
    """A stand-in outer update: move ``w`` towards a random target each iteration."""

    config_class = ToyConfig

    def _setup_model(self) -> None:
        self.w = torch.zeros(3, dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(self.config.seed)

    def train_iteration(self) -> dict[str, float]:
        target = torch.randn(3, generator=self.gen, dtype=torch.float64)
        loss = float(((self.w - target) ** 2).sum())
        self.w += self.config.step * (target - self.w)
        self.num_iterations += 1
        return {"train/loss": loss}

    def _state_dict(self) -> dict:
        return {"w": self.w.clone(), "gen": self.gen.get_state()}

    def _load_state_dict(self, state) -> None:
        self.w.copy_(state["w"])
        self.gen.set_state(state["gen"])

    def _parameters(self) -> dict[str, torch.Tensor]:
        return {"w": self.w}

    def _reseed(self, seed: int) -> None:
        self.gen.manual_seed(seed)


def test_a_new_outer_update_gets_the_whole_stack(tmp_path) -> None:
    conf = ToyConfig(method="euler", iterations=8, checkpoint_interval=2, device="cpu")
    straight = ToyAlgorithm(conf, logdir=str(tmp_path / "a"))
    straight.learn()
    cut = ToyAlgorithm(conf, logdir=str(tmp_path / "b"))
    with pytest.raises(KeyError):
        cut.learn(callback=lambda m, s: {}[m.num_iterations] if m.num_iterations == 5 else None)
    resumed = ToyAlgorithm(conf, logdir=str(tmp_path / "b"), resume=True)
    assert resumed.num_iterations == 4
    resumed.learn()
    assert torch.equal(straight.w, resumed.w) and resumed.num_iterations == 8
    with pytest.raises(ConfigMismatchError, match="step"):
        ToyAlgorithm(ToyConfig(method="euler", iterations=9, step=0.1, device="cpu"), logdir=str(tmp_path / "b"),
                     resume=True)
