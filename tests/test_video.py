"""Rollout videos: a real offscreen MuJoCo rollout written as a GIF image summary and read back from disk."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from rkmeta_rl import video  # sets MUJOCO_GL when unset
from rkmeta_rl.envs.locomotion import LOCOMOTION_IDS, register_locomotion

register_locomotion()


def _render(tasks: list[dict], horizon: int, width: int = 64, height: int = 48) -> np.ndarray:
    try:
        return video.render_task_rollouts(LOCOMOTION_IDS["HalfCheetahVel"], tasks, None, horizon=horizon,
                                          width=width, height=height)
    except RuntimeError as err:  # no offscreen GL here: say what is missing instead of skipping
        pytest.fail(f"offscreen MuJoCo rendering does not work on this machine (MUJOCO_GL="
                    f"{os.environ.get('MUJOCO_GL')!r}): {err}")


def _read_gifs(logdir: str, tag: str) -> list[tuple[int, Image.Image]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"images": 0})
    acc.Reload()
    assert tag in acc.Tags()["images"]
    return [(e.step, Image.open(io.BytesIO(e.encoded_image_string))) for e in acc.Images(tag)]


def test_video_roundtrip_summary_writer(tmp_path: object) -> None:
    from torch.utils.tensorboard import SummaryWriter

    frames = _render([{"velocity": 0.5}, {"velocity": 1.5}], horizon=3)
    assert frames.shape == (4, 48, 2 * 64 + 2, 3) and frames.dtype == np.uint8
    assert frames[:, :, :64].std() > 5  # a real picture, not a blank buffer
    writer = SummaryWriter(str(tmp_path))
    assert video.log_rollout_video(writer, "rollouts/HalfCheetahVel", frames, step=7, fps=10)
    writer.close()
    [(step, gif)] = _read_gifs(str(tmp_path), "rollouts/HalfCheetahVel")
    assert step == 7 and gif.format == "GIF" and gif.size == (130, 48)
    assert gif.n_frames == 4 and gif.info["duration"] == 100
    gif.seek(3)
    last = np.asarray(gif.convert("RGB"), dtype=np.float64)
    assert np.abs(last - frames[3]).mean() < 12  # palette quantisation only


def test_video_through_sb3_logger(tmp_path: object) -> None:
    from stable_baselines3.common.logger import Logger, configure

    frames = _render([{"velocity": 1.0}], horizon=2, width=40, height=30)
    logger = configure(str(tmp_path), ["tensorboard"])
    assert video.log_rollout_video(logger, "rollouts/sb3", frames, step=1)
    logger.close()
    [(_, gif)] = _read_gifs(str(tmp_path), "rollouts/sb3")
    assert gif.n_frames == 3 and gif.size == (40, 30)
    assert not video.log_rollout_video(Logger(folder=None, output_formats=[]), "x", frames, step=0)


def test_helpers() -> None:
    assert video.format_task({"goal": np.array([0.5, -1.25])}) == "goal=(0.50,-1.25)"
    assert video.format_task({"direction": -1.0}) == "direction=-1.00"
    tiled = video.tile_frames([np.zeros((3, 4, 5, 3), np.uint8), np.full((1, 4, 5, 3), 9, np.uint8)])
    assert tiled.shape == (3, 4, 12, 3) and (tiled[2, :, 7:] == 9).all()  # the short one holds its last frame
    with pytest.raises(ValueError, match="uint8"):
        video.encode_gif(np.zeros((2, 4, 4, 3), np.float32))
    assert os.environ.get("MUJOCO_GL") in ("egl", "osmesa", "glfw")
