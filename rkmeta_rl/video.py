"""Rollout videos of a few tasks, rendered offscreen with MuJoCo and logged to TensorBoard as animated GIFs.

Rendering: an offscreen OpenGL context of the backend named by ``MUJOCO_GL`` (``egl`` or ``osmesa``; set here
only when unset, at import, so that a later ``import mujoco`` sees it). The backend is imported explicitly
when a renderer is made, so it works even when ``mujoco`` was imported first. Shadows are off (measured on
this project's CPU machine: 50-120 ms per frame with shadows, 12-36 ms without) and frames are small.

Logging: ``SummaryWriter.add_video`` needs moviepy, and silently drops the video with moviepy 2.x
(https://github.com/pytorch/pytorch/issues/147317). :func:`log_rollout_video` does what ``add_video`` does
internally without it: it encodes an animated GIF with Pillow and writes a ``Summary.Image`` whose
``encoded_image_string`` is the GIF, which TensorBoard's Images tab plays. It takes a ``SummaryWriter`` or a
Stable-Baselines3 ``Logger`` (its TensorBoard output's writer).

    frames = render_task_rollouts("rkmeta/HalfCheetahVel-v0", tasks[:3], policy_fn, horizon=100)
    log_rollout_video(writer, "rollouts/post_adaptation", frames, step=iteration, fps=20)
"""

from __future__ import annotations

import ctypes.util
import io
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import gymnasium as gym
    import mujoco
    import torch

__all__ = ["configure_offscreen_gl", "OffscreenRenderer", "render_rollout", "render_task_rollouts",
           "format_task", "annotate", "tile_frames", "encode_gif", "log_rollout_video"]

_log = logging.getLogger(__name__)

#: ``policy_fn(obs [1, obs_dim] float32 tensor) -> actions [1, act_dim]`` (or ``(actions, aux)``).
PolicyFn = Callable[["torch.Tensor"], Any]


def _default_backend() -> str:
    """EGL on a machine with an NVIDIA driver, else OSMesa if its library is installed, else EGL (Mesa)."""
    if os.path.exists("/dev/nvidia0") or os.path.exists("/usr/share/glvnd/egl_vendor.d/10_nvidia.json"):
        return "egl"
    if ctypes.util.find_library("OSMesa"):
        return "osmesa"
    return "egl"


def configure_offscreen_gl() -> str:
    """Set ``MUJOCO_GL`` for offscreen rendering if it is unset; returns the backend in effect.

    Call before ``mujoco`` is first imported for ``mujoco.Renderer`` to see it (importing this module does).
    :class:`OffscreenRenderer` reads the variable itself, so it only needs this before it is constructed.
    """
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not backend:
        backend = _default_backend()
        os.environ["MUJOCO_GL"] = backend
    return backend


configure_offscreen_gl()


def _gl_context(backend: str, width: int, height: int) -> Any:
    """An offscreen GL context of ``backend``, made current; a clear error when it cannot be made."""
    try:
        if backend == "egl":
            from mujoco.egl import GLContext
        elif backend == "osmesa":
            from mujoco.osmesa import GLContext
        elif backend == "glfw":
            from mujoco.glfw import GLContext
        else:
            raise ValueError(f"MUJOCO_GL={backend!r}: use 'egl' or 'osmesa' for offscreen rendering")
        ctx = GLContext(width, height)
        ctx.make_current()
        return ctx
    except Exception as err:
        raise RuntimeError(
            f"offscreen MuJoCo rendering with MUJOCO_GL={backend!r} failed ({type(err).__name__}: {err}). "
            f"CPU machines: `apt-get install -y libosmesa6` and MUJOCO_GL=osmesa; GPU machines: an EGL driver "
            f"(libegl1) and MUJOCO_GL=egl. PYOPENGL_PLATFORM, if set, must match.") from err


class OffscreenRenderer:
    """Small offscreen RGB renderer for one ``MjModel``, with a camera that tracks a body and no shadows.

    Args:
        model: the model (its ``vis.quality.shadowsize`` is set to 0 when ``shadows`` is False).
        width, height: frame size in pixels (at most the model's offscreen buffer, 640 x 480 by default).
        track_body: body id or name the camera follows (1: the torso of the cheetah and the ant).
        distance: camera distance in metres (3.5 frames the cheetah and the ant).
        elevation, azimuth: camera angles in degrees (default: a side view of motion along x).
        shadows: keep MuJoCo's shadows (several times slower on software GL).
        backend: ``"egl"`` / ``"osmesa"``; default :func:`configure_offscreen_gl`.
    """

    def __init__(self, model: "mujoco.MjModel", width: int = 160, height: int = 120, *,
                 track_body: int | str = 1, distance: float = 3.5, elevation: float = -20.0,
                 azimuth: float = 90.0, shadows: bool = False, backend: str | None = None) -> None:
        import mujoco

        self._mj = mujoco
        self.width, self.height = int(width), int(height)
        if self.width > model.vis.global_.offwidth or self.height > model.vis.global_.offheight:
            raise ValueError(f"{width}x{height} exceeds the model's offscreen buffer "
                             f"{model.vis.global_.offwidth}x{model.vis.global_.offheight}")
        self.model = model
        self.backend = backend or configure_offscreen_gl()
        if not shadows:
            model.vis.quality.shadowsize = 0  # no shadow map is allocated in the context below
        self._ctx = _gl_context(self.backend, self.width, self.height)
        self._scene = mujoco.MjvScene(model, maxgeom=2000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(bool(shadows))
        self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._opt = mujoco.MjvOption()
        cam = mujoco.MjvCamera()
        body = track_body if isinstance(track_body, int) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY,
                                                                               track_body)
        if body < 0:
            raise ValueError(f"no body {track_body!r} in the model")
        cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        cam.trackbodyid = int(body)
        cam.distance = float(distance)
        cam.elevation, cam.azimuth = float(elevation), float(azimuth)
        self._cam = cam
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), dtype=np.uint8)

    def render(self, data: "mujoco.MjData") -> np.ndarray:
        """The current state of ``data`` as an RGB frame ``[H, W, 3]`` uint8 (a new array)."""
        mj = self._mj
        self._ctx.make_current()
        mj.mjv_updateScene(self.model, data, self._opt, None, self._cam, mj.mjtCatBit.mjCAT_ALL, self._scene)
        mj.mjr_render(self._rect, self._scene, self._con)
        mj.mjr_readPixels(self._rgb, None, self._rect, self._con)
        return np.flipud(self._rgb).copy()  # OpenGL's origin is the bottom-left corner

    def close(self) -> None:
        """Free the GL resources (idempotent)."""
        if getattr(self, "_con", None) is not None:
            self._ctx.make_current()
            self._con.free()
            self._con = None
        if getattr(self, "_ctx", None) is not None:
            self._ctx.free()
            self._ctx = None

    def __enter__(self) -> "OffscreenRenderer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_task(task: Any) -> str:
    """A short label of a task dict: ``"velocity=1.27"``, ``"goal=(0.82,-1.38)"``."""
    if not isinstance(task, Mapping):
        return str(task)
    parts = []
    for k, v in task.items():
        arr = np.asarray(v)
        if arr.ndim == 0 and np.issubdtype(arr.dtype, np.number):
            parts.append(f"{k}={float(arr):+.2f}" if k == "direction" else f"{k}={float(arr):.2f}")
        elif arr.ndim == 1 and arr.size <= 4 and np.issubdtype(arr.dtype, np.number):
            parts.append(f"{k}=(" + ",".join(f"{x:.2f}" for x in arr) + ")")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def annotate(frame: np.ndarray, text: str) -> np.ndarray:
    """``frame [H, W, 3]`` uint8 with ``text`` written at the top left (white on a dark box, Pillow's font)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((2, 1), text)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(img)


def _policy_actions(policy_fn: PolicyFn | None, obs: np.ndarray, space: Any) -> np.ndarray:
    if policy_fn is None:
        return np.zeros(space.shape, dtype=space.dtype)
    import torch

    with torch.no_grad():
        out = policy_fn(torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1)))
    act = out[0] if isinstance(out, tuple) else out
    return act.detach().cpu().numpy().reshape(space.shape).astype(space.dtype)


def render_rollout(env: "str | gym.Env", policy_fn: PolicyFn | None = None, task: Any = None,
                   horizon: int = 100, width: int = 160, height: int = 120, seed: int = 0, every: int = 1,
                   label: str | None = None, env_kwargs: Mapping[str, Any] | None = None,
                   **camera: Any) -> np.ndarray:
    """Roll out one episode and render it.

    Args:
        env: a registered id or an env instance (a MuJoCo env: its unwrapped env has ``model`` and ``data``).
        policy_fn: batched policy called with ``obs [1, obs_dim]``; ``None``: zero actions.
        task: the task (``reset(options={"task": task})``); ``None``: the env's current one.
        horizon: steps at most (the episode also stops when it terminates).
        width, height: frame size.
        seed: reset seed.
        every: render every ``every``-th step (plus the initial state).
        label: text on every frame, followed by the step; default the task (:func:`format_task`).
        env_kwargs: for ``gymnasium.make`` when ``env`` is an id.
        **camera: :class:`OffscreenRenderer` keywords (``distance``, ``elevation``, ...).

    Returns:
        Frames ``[T, H, W, 3]`` uint8, ``T = 1 + (steps taken) // every``.
    """
    import gymnasium as gym

    own = isinstance(env, str)
    e = gym.make(env, disable_env_checker=True, **dict(env_kwargs or {})) if own else env
    base = e.unwrapped
    try:
        if task is not None and hasattr(base, "set_task"):
            base.set_task(task)
        obs, _ = e.reset(seed=seed, options=None if task is None else {"task": task})
        if label is None:
            label = format_task(base.get_task()) if hasattr(base, "get_task") else ""
        frames = []
        with OffscreenRenderer(base.model, width, height, **camera) as renderer:
            frames.append(annotate(renderer.render(base.data), f"{label} t=0".strip()))
            for t in range(1, int(horizon) + 1):
                obs, _, terminated, truncated, _ = e.step(_policy_actions(policy_fn, obs, e.action_space))
                if t % every == 0:
                    frames.append(annotate(renderer.render(base.data), f"{label} t={t}".strip()))
                if terminated or truncated:
                    break
        return np.stack(frames)
    finally:
        if own:
            e.close()


def tile_frames(videos: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
    """Videos ``[T_i, H, W, 3]`` side by side: ``[max T_i, H, k W + (k-1) pad, 3]``; a shorter video (an
    episode that terminated) holds its last frame."""
    if not videos:
        raise ValueError("no videos to tile")
    t_max = max(v.shape[0] for v in videos)
    padded = [np.concatenate([v, np.repeat(v[-1:], t_max - v.shape[0], axis=0)]) if v.shape[0] < t_max else v
              for v in videos]
    h = padded[0].shape[1]
    sep = np.zeros((t_max, h, pad, 3), dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, v in enumerate(padded):
        if i:
            parts.append(sep)
        parts.append(v)
    return np.concatenate(parts, axis=2)


def render_task_rollouts(env: "str | gym.Env", tasks: Sequence[Any],
                         policy_fn: PolicyFn | Sequence[PolicyFn] | None = None, horizon: int = 100,
                         width: int = 160, height: int = 120, seed: int = 0, every: int = 1,
                         env_kwargs: Mapping[str, Any] | None = None, **camera: Any) -> np.ndarray:
    """One rollout per task, tiled side by side (:func:`tile_frames`), each labelled with its task.

    ``policy_fn`` is one policy for all tasks, or one per task (e.g. the adapted policies).

    Returns:
        ``[T, H, k W + (k-1) 2, 3]`` uint8 for ``k = len(tasks)``.
    """
    fns = list(policy_fn) if isinstance(policy_fn, (list, tuple)) else [policy_fn] * len(tasks)
    if len(fns) != len(tasks):
        raise ValueError(f"{len(fns)} policies for {len(tasks)} tasks")
    videos = [render_rollout(env, fn, task, horizon=horizon, width=width, height=height, seed=seed + i,
                             every=every, env_kwargs=env_kwargs, **camera)
              for i, (task, fn) in enumerate(zip(tasks, fns))]
    return tile_frames(videos)


def encode_gif(frames: np.ndarray, fps: float = 20.0) -> bytes:
    """Animated GIF (looping) of ``frames [T, H, W, 3]`` uint8 with Pillow.

    GIF stores frame delays in 1/100 s, so ``fps`` is rounded to that; Pillow merges consecutive identical
    frames into one longer frame (the frames of :func:`render_rollout` differ: they carry the step).
    """
    from PIL import Image

    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 1:
        raise ValueError(f"frames must be [T, H, W, 3] uint8 with T >= 1, got {arr.shape} {arr.dtype}")
    images = [Image.fromarray(f) for f in arr]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(10, int(round(1000.0 / float(fps)))), loop=0)
    return buf.getvalue()


def _summary_writer(writer_or_logger: Any) -> Any:
    """The ``torch.utils.tensorboard.SummaryWriter`` of a writer or of an SB3 ``Logger``; ``None`` if none."""
    if hasattr(writer_or_logger, "_get_file_writer"):
        return writer_or_logger
    for fmt in getattr(writer_or_logger, "output_formats", ()):
        w = getattr(fmt, "writer", None)
        if w is not None and hasattr(w, "_get_file_writer"):
            return w
    return None


def log_rollout_video(writer_or_logger: Any, tag: str, frames: np.ndarray, step: int, fps: float = 20.0) -> bool:
    """Write ``frames [T, H, W, 3]`` uint8 as an animated GIF image summary (no moviepy needed).

    Args:
        writer_or_logger: a ``torch.utils.tensorboard.SummaryWriter``, or an SB3 ``Logger`` with a
            TensorBoard output format.
        tag: TensorBoard tag (put the task in it, or on the frames).
        frames: ``[T, H, W, 3]`` uint8.
        step: global step.
        fps: playback rate.

    Returns:
        True when written; False (with a logged warning) when the logger has no TensorBoard output.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    writer = _summary_writer(writer_or_logger)
    if writer is None:
        _log.warning("no TensorBoard writer in %s: video %r not logged", type(writer_or_logger).__name__, tag)
        return False
    arr = np.asarray(frames)
    gif = encode_gif(arr, fps)
    image = Summary.Image(height=int(arr.shape[1]), width=int(arr.shape[2]), colorspace=3,
                          encoded_image_string=gif)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), int(step))
    writer.flush()
    return True
