"""The conv4 few-shot classifier of MAML (Finn et al., 2017, section 5.2; after Vinyals et al., 2016), functional.

Four blocks of ``3x3 conv -> batch norm -> ReLU``, then a linear layer (docs/protocols.md):

* ``pool="stride"`` (MAML's Omniglot net, 64 filters): stride-2 convolutions (padding 1), a spatial mean,
  then ``linear(filters -> num_classes)``. 28 -> 14 -> 7 -> 4 -> 2 pixels.
* ``pool="max"`` (MAML's MiniImagenet net, 32 filters): stride-1 convolutions (padding 1) each followed by
  2x2 max-pooling, flattened, then ``linear(filters * s * s -> num_classes)``. 84 -> 42 -> 21 -> 10 -> 5.

Batch norm uses the statistics of the current batch, always (as MAML does: no running statistics, learned
per-channel scale and shift); at meta-test the query set is normalised with its own statistics (transductive,
as in MAML). Under the engine's ``vmap`` path the statistics are per task.

Batch norm is written from plain mean/var ops, NOT ``F.batch_norm``: under ``torch.func.vmap`` PyTorch's fused
batch-norm backward gives wrong second-order gradients (https://github.com/pytorch/functorch/issues/534;
measured 0.2-15 % off the meta-gradient). ``norm="fused"`` exists only to demonstrate that in the tests.

Parameters are a plain ``dict[str, Tensor]``::

    conv{i}.weight [F, C_in, 3, 3]   (conv{i}.bias [F] with conv_bias=True)   i = 1..4
    bn{i}.weight [F], bn{i}.bias [F]
    fc.weight [num_classes, D], fc.bias [num_classes]
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F

__all__ = ["Pool", "Norm", "TaskLoss", "BLOCKS", "init_conv4", "conv4_forward", "batch_norm", "conv4_losses",
           "accuracy", "feature_size"]

Pool = Literal["stride", "max"]
#: ``loss(params, task) -> scalar``, the engine's loss signature.
TaskLoss = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]
Norm = Literal["plain", "fused"]
BLOCKS = 4
_EPS = 1e-5


def feature_size(image_size: int, filters: int, pool: Pool) -> int:
    """Input width ``D`` of the linear layer for square ``image_size`` inputs."""
    if pool == "stride":
        return filters
    if pool == "max":
        s = image_size
        for _ in range(BLOCKS):
            s //= 2
        if s < 1:
            raise ValueError(f"image_size {image_size} is too small for {BLOCKS} 2x2 max-pools")
        return filters * s * s
    raise ValueError(f"pool must be 'stride' or 'max', got {pool!r}")


def init_conv4(in_channels: int, num_classes: int, *, filters: int = 64, pool: Pool = "stride",
               image_size: int = 28, conv_bias: bool = False, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Fresh conv4 parameters.

    Convolution and linear weights are Glorot/Xavier-uniform (as MAML's ``xavier_initializer``), biases zero,
    batch-norm scales one and shifts zero.

    Args:
        in_channels: 1 for Omniglot, 3 for MiniImagenet.
        num_classes: ``N`` of N-way tasks.
        filters: channels of every block (Omniglot 64, MiniImagenet 32).
        pool: ``"stride"`` or ``"max"`` (see the module docstring).
        image_size: input side (sizes the linear layer for ``pool="max"``).
        conv_bias: add convolution biases. Off by default: a bias before batch norm on batch statistics
            cancels exactly (its gradient is identically zero).
        generator: torch random generator (reproducible initialisation).
        dtype, device: of the parameters.

    Returns:
        ``{name: tensor}`` leaf tensors (no ``requires_grad``: the engine handles that).
    """
    kw: dict[str, Any] = {"dtype": dtype, "device": device}

    def xavier(shape: tuple[int, ...], fan_in: int, fan_out: int) -> torch.Tensor:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(shape, generator=generator, dtype=dtype).to(device) * 2 - 1) * bound

    params: dict[str, torch.Tensor] = {}
    c_in = in_channels
    for i in range(1, BLOCKS + 1):
        params[f"conv{i}.weight"] = xavier((filters, c_in, 3, 3), c_in * 9, filters * 9)
        if conv_bias:
            params[f"conv{i}.bias"] = torch.zeros(filters, **kw)
        params[f"bn{i}.weight"] = torch.ones(filters, **kw)
        params[f"bn{i}.bias"] = torch.zeros(filters, **kw)
        c_in = filters
    d = feature_size(image_size, filters, pool)
    params["fc.weight"] = xavier((num_classes, d), d, num_classes)
    params["fc.bias"] = torch.zeros(num_classes, **kw)
    return params


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Batch norm on the batch's own statistics from plain ops (exact higher-order gradients under vmap).

    Args:
        x: ``[B, F, H, W]``.
        weight, bias: ``[F]`` learned scale and shift.
        eps: added to the (biased) variance.

    Returns:
        ``weight * (x - mean) / sqrt(var + eps) + bias`` with mean and var over ``(B, H, W)`` per channel.
    """
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)
    return centred * torch.rsqrt(var + eps) * weight[None, :, None, None] + bias[None, :, None, None]


def conv4_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, *, pool: Pool = "stride",
                  eps: float = _EPS, norm: Norm = "plain") -> torch.Tensor:
    """Logits of the conv4 classifier, a pure function of ``params``.

    Args:
        params: from :func:`init_conv4` (possibly adapted).
        x: images ``[B, C, H, W]``.
        pool: ``"stride"`` or ``"max"``; must match the parameters' ``pool``.
        eps: batch-norm epsilon.
        norm: ``"plain"`` (always use this) or ``"fused"`` (``F.batch_norm`` in training mode without running
            statistics: same forward, WRONG second-order gradients under ``vmap``; for tests only).

    Returns:
        ``[B, num_classes]`` logits.
    """
    if pool not in ("stride", "max"):
        raise ValueError(f"pool must be 'stride' or 'max', got {pool!r}")
    h = x
    for i in range(1, BLOCKS + 1):
        h = F.conv2d(h, params[f"conv{i}.weight"], params.get(f"conv{i}.bias"),
                     stride=2 if pool == "stride" else 1, padding=1)
        if norm == "plain":
            h = batch_norm(h, params[f"bn{i}.weight"], params[f"bn{i}.bias"], eps)
        elif norm == "fused":
            h = F.batch_norm(h, None, None, params[f"bn{i}.weight"], params[f"bn{i}.bias"], training=True, eps=eps)
        else:
            raise ValueError(f"norm must be 'plain' or 'fused', got {norm!r}")
        h = F.relu(h)
        if pool == "max":
            h = F.max_pool2d(h, 2)
    h = h.mean(dim=(2, 3)) if pool == "stride" else h.flatten(1)
    return F.linear(h, params["fc.weight"], params["fc.bias"])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of ``argmax(logits) == labels``; ``logits [B, N]``, ``labels [B]`` -> scalar tensor."""
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean()


def conv4_losses(pool: Pool = "stride", *, eps: float = _EPS, norm: Norm = "plain") -> tuple[TaskLoss, TaskLoss]:
    """Support and query cross-entropy losses for the engine, over one task of the episode pytree.

    Returns:
        ``(support_loss, query_loss)``, each ``loss(params, task) -> scalar`` with ``task`` one task of
        :class:`~rkmeta_rl.supervised.episodes.EpisodeSampler`'s batch: ``{"xs": [N*K, C, H, W], "ys": [N*K],
        "xq": [N*Q, C, H, W], "yq": [N*Q]}``. Pass them to ``rkmeta_rl.rk.meta_gradient``. With
        ``norm="plain"`` they are :class:`rkmeta_rl.rk.TaskBatchedLoss` objects whose ``batched`` form scores
        all tasks of the batch at once (:mod:`rkmeta_rl.supervised.conv4_tasks`), which the engine's
        ``"batched"`` path uses; with ``pool="stride"`` they also carry the hand-written gradient and
        Hessian-vector product (:mod:`rkmeta_rl.supervised.conv4_analytic`) of the ``"analytic"`` path, the
        default for this net.
    """
    from rkmeta_rl.rk.batched import TaskBatchedLoss

    from .conv4_tasks import conv4_forward_tasks, task_cross_entropy

    def support_loss(params: Mapping[str, torch.Tensor], task: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(conv4_forward(params, task["xs"], pool=pool, eps=eps, norm=norm), task["ys"])

    def query_loss(params: Mapping[str, torch.Tensor], task: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(conv4_forward(params, task["xq"], pool=pool, eps=eps, norm=norm), task["yq"])

    if norm != "plain":
        return support_loss, query_loss

    def support_tasks(params: Mapping[str, torch.Tensor], tasks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return task_cross_entropy(conv4_forward_tasks(params, tasks["xs"], pool=pool, eps=eps), tasks["ys"])

    def query_tasks(params: Mapping[str, torch.Tensor], tasks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return task_cross_entropy(conv4_forward_tasks(params, tasks["xq"], pool=pool, eps=eps), tasks["yq"])

    from .conv4_analytic import Conv4Analytic

    # the hand-written form covers the strided (Omniglot) net; the max-pool one has the batched form only
    strided = pool == "stride"
    return (TaskBatchedLoss(support_loss, support_tasks, Conv4Analytic("xs", "ys", eps) if strided else None),
            TaskBatchedLoss(query_loss, query_tasks, Conv4Analytic("xq", "yq", eps) if strided else None))
