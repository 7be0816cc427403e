"""The conv4 of :mod:`rkmeta_rl.supervised.conv4` for many tasks at once, each with its own parameters.

``conv4_forward_tasks(params_T, x)`` with ``params_T[name]`` of shape ``[T, *shape]`` and images ``x`` of shape
``[T, B, C, H, W]`` returns ``[T, B, N]`` logits whose slice ``t`` is ``conv4_forward({k: v[t]}, x[t])``: the
same network, the same batch-norm statistics (per task), only computed for every task in each operation. It is
what the engine's ``"batched"`` path differentiates twice (:mod:`rkmeta_rl.rk.batched`).

A convolution of every task with its own kernel is one batched matrix product over an im2col matrix::

    cols_t = unfold(x_t)                         [C k k, B L]   (L output pixels per image)
    y_t    = W_t cols_t                          [F, B L],      W_t = kernel of task t as [F, C k k]

so each layer of each stage of the second-order program is ONE ``bmm`` (and one ``unfold`` / its adjoint ``fold``)
instead of ``T`` small convolutions. Activations stay in the layout ``[T, F, B, L]``: batch norm reduces over
``(B, L)`` per task and channel, written from plain mean/var ops (no fused kernel: see the functorch issue
https://github.com/pytorch/functorch/issues/534) and checked by finite differences in the tests. Everything is
built from PyTorch ops with exact higher-order derivatives (``unfold``, ``bmm``, elementwise ops), so no custom
backward is involved.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

__all__ = ["task_conv2d", "task_batch_norm", "conv4_forward_tasks", "task_cross_entropy"]

_EPS = 1e-5


def task_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tasks: int, stride: int,
                padding: int) -> torch.Tensor:
    """Every task's images convolved with that task's kernel, as one ``bmm``.

    Args:
        x: ``[T * B, C, H, W]`` images, task-major (task ``t`` owns rows ``t B ... t B + B - 1``).
        weight: ``[T, F, C, k, k]`` per-task kernels.
        bias: ``[T, F]`` per-task biases or None.
        tasks: ``T``.
        stride, padding: as ``F.conv2d``.

    Returns:
        ``[T, F, B, Ho, Wo]`` with ``out[t, :, b] = conv2d(x[t B + b], weight[t], bias[t])``.
    """
    tb, c, h, w = x.shape
    b = tb // tasks
    f, k = weight.shape[1], weight.shape[-1]
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    cols = F.unfold(x, k, padding=padding, stride=stride)  # [T B, C k k, L]
    cols = cols.reshape(tasks, b, c * k * k, ho * wo).transpose(1, 2).reshape(tasks, c * k * k, b * ho * wo)
    out = torch.bmm(weight.reshape(tasks, f, c * k * k), cols)  # [T, F, B L]
    if bias is not None:
        out = out + bias[:, :, None]
    return out.reshape(tasks, f, b, ho, wo)


def task_batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Batch norm per task and channel on the batch's own statistics, from plain ops.

    Args:
        x: ``[T, F, B, H, W]``.
        weight, bias: ``[T, F]`` learned scale and shift.
        eps: added to the (biased) variance.

    Returns:
        ``(x - mean) * weight / sqrt(var + eps) + bias`` with mean and var over ``(B, H, W)`` per ``(t, f)``:
        the same as :func:`rkmeta_rl.supervised.conv4.batch_norm` on each task (one fused ``addcmul`` for the
        scale and shift).
    """
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=(2, 3, 4), keepdim=True)
    scale = torch.rsqrt(var + eps) * weight[:, :, None, None, None]
    return torch.addcmul(bias[:, :, None, None, None], centred, scale)


def conv4_forward_tasks(params: Mapping[str, torch.Tensor], x: torch.Tensor, *, pool: str = "stride",
                        eps: float = _EPS) -> torch.Tensor:
    """Logits of the conv4 for ``T`` tasks, each with its own parameters.

    Args:
        params: ``{name: [T, *shape]}``, the names of :func:`rkmeta_rl.supervised.conv4.init_conv4`.
        x: images ``[T, B, C, H, W]``.
        pool: ``"stride"`` or ``"max"`` (as :func:`rkmeta_rl.supervised.conv4.conv4_forward`).
        eps: batch-norm epsilon.

    Returns:
        ``[T, B, num_classes]``; slice ``t`` equals ``conv4_forward({k: v[t]}, x[t], pool=pool)``.
    """
    if pool not in ("stride", "max"):
        raise ValueError(f"pool must be 'stride' or 'max', got {pool!r}")
    t, b = x.shape[:2]
    h = x.reshape(t * b, *x.shape[2:])
    i = 1
    while f"conv{i}.weight" in params:
        o = task_conv2d(h, params[f"conv{i}.weight"], params.get(f"conv{i}.bias"), t,
                        stride=2 if pool == "stride" else 1, padding=1)
        o = F.relu(task_batch_norm(o, params[f"bn{i}.weight"], params[f"bn{i}.bias"], eps))  # [T, F, B, H, W]
        if pool == "max":
            tf, hh, ww = o.shape[0] * o.shape[1], o.shape[3], o.shape[4]
            o = F.max_pool2d(o.reshape(tf, b, hh, ww), 2).reshape(t, o.shape[1], b, hh // 2, ww // 2)
        i += 1
        if f"conv{i}.weight" in params:
            h = o.transpose(1, 2).reshape(t * b, o.shape[1], o.shape[3], o.shape[4])
    if pool == "stride":
        feats = o.mean(dim=(3, 4)).transpose(1, 2)  # [T, B, F]
    else:
        feats = o.transpose(1, 2).reshape(t, b, -1)  # [T, B, F h w], per image flattened as (F, h, w)
    return torch.baddbmm(params["fc.bias"][:, None, :], feats, params["fc.weight"].transpose(1, 2))


def task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-task mean cross-entropy: ``logits [T, B, N]``, ``labels [T, B]`` -> ``[T]``."""
    t, b, n = logits.shape
    return F.cross_entropy(logits.reshape(t * b, n), labels.reshape(t * b), reduction="none").reshape(t, b).mean(1)
