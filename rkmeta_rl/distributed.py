"""Data-parallel helpers on ``torch.distributed``, launched with ``torchrun``.

    torchrun --standalone --nproc_per_node=2 scripts/train_sinusoid.py --method ralston ...

:func:`init_distributed` starts the process group only when the process was launched by ``torchrun`` (or
anything else that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``);
otherwise it returns a one-process :class:`DistInfo` and changes nothing, so every script keeps working
unchanged. The backend is chosen from the device: ``gloo`` on CPU, ``nccl`` on CUDA.

Failure behaviour. The process group gets a collective timeout (``timeout_s``, default 120 s). When a rank
crashes, the others do not hang: with ``gloo`` the peers see the closed connection and their next collective
raises at once, and a rank that is alive but stuck (deadlocked, or skipped a collective) makes the others'
collective raise after ``timeout_s`` (for gloo the ``timeout=`` of ``init_process_group`` applies to every
collective). With ``nccl`` the timeout is enforced by the watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by
default), which aborts the process. Under ``torchrun`` the elastic agent also tears the remaining workers
down as soon as one exits with an error. Keep ``timeout_s`` above the longest stretch of work that one rank
does alone between two collectives (e.g. rank 0 writing a checkpoint or a figure).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "init_distributed", "current_dist", "launched_by_torchrun", "all_reduce_mean", "all_reduce_max",
    "all_gather_objects", "split_batch", "batch_slice", "rank_seed", "broadcast_params", "barrier", "destroy",
    "DEFAULT_TIMEOUT_S",
]

log = logging.getLogger(__name__)

#: Default collective timeout in seconds (override with ``init_distributed(timeout_s=...)`` or the
#: ``RKMETA_DIST_TIMEOUT`` environment variable).
DEFAULT_TIMEOUT_S = 120.0

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the data-parallel group.

    Attributes:
        rank: global rank (0 .. world_size - 1).
        world_size: number of processes (1 without torchrun).
        local_rank: rank on this machine (selects the GPU with NCCL).
        backend: ``"gloo"``, ``"nccl"`` or ``"none"`` (no process group).
        is_main: ``rank == 0``: the process that logs, writes checkpoints and metrics.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        """True when there is more than one process (collectives are needed)."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables (``RANK``, ``WORLD_SIZE``, ...) are all set."""
    return all(k in os.environ for k in _ENV_KEYS)


def current_dist() -> DistInfo:
    """The :class:`DistInfo` of an already initialised process group, or the one-process one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    rank = dist.get_rank()
    return DistInfo(rank=rank, world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                    backend=str(dist.get_backend()), is_main=rank == 0)


def init_distributed(device: str | torch.device = "auto", timeout_s: float | None = None) -> DistInfo:
    """Join the process group when launched by torchrun; otherwise return a one-process :class:`DistInfo`.

    Args:
        device: the training device (``"auto"``, ``"cpu"``, ``"cuda"``): CUDA selects ``nccl`` and pins this
            process to GPU ``LOCAL_RANK``; CPU selects ``gloo``.
        timeout_s: collective timeout in seconds (default: ``$RKMETA_DIST_TIMEOUT`` or
            :data:`DEFAULT_TIMEOUT_S`). A crashed or stuck rank makes the others raise within it.

    Returns:
        this process's :class:`DistInfo`. Calling it again when the group exists returns the current one.
    """
    if dist.is_available() and dist.is_initialized():
        return current_dist()
    if not launched_by_torchrun():
        return DistInfo()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if world <= 1:
        return DistInfo(local_rank=local_rank)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if isinstance(device, str) and device == "auto":
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = torch.device(device).type == "cuda"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if timeout_s is None:
        timeout_s = float(os.environ.get("RKMETA_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank,
                            timeout=datetime.timedelta(seconds=float(timeout_s)))
    log.info("rank %d/%d joined the %s process group (timeout %.0f s)", rank, world, backend, timeout_s)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend, is_main=rank == 0)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(like: torch.device) -> torch.device:
    """Device the collective buffer must live on: CUDA for nccl, CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if like.type != "cpu" else like


def all_reduce_mean(tensors: Sequence[torch.Tensor], weight: float | None = None) -> list[torch.Tensor]:
    """Average ``tensors`` over the ranks with one collective (flatten, one ``all_reduce``, unflatten).

    Args:
        tensors: this rank's tensors (same shapes and order on every rank).
        weight: this rank's weight (e.g. its number of tasks). The result is the weighted mean
            ``sum_r w_r x_r / sum_r w_r``; so with ``x_r`` the mean over rank r's ``w_r`` tasks it equals the
            mean over all tasks. ``None``: equal weights.

    Returns:
        new tensors (same shapes, dtypes and devices as the inputs); the inputs are returned unchanged
        (as new references) without a process group.
    """
    tensors = list(tensors)
    if not _active() or not tensors:
        return [t.clone() for t in tensors]
    w = 1.0 if weight is None else float(weight)
    dev = _comm_device(tensors[0].device)
    flat = torch.cat([t.detach().reshape(-1).to(dev, torch.float64 if t.dtype == torch.float64 else torch.float32)
                      for t in tensors])
    buf = torch.cat([flat * w, torch.tensor([w], dtype=flat.dtype, device=dev)])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    mean = buf[:-1] / buf[-1]
    out: list[torch.Tensor] = []
    offset = 0
    for t in tensors:
        n = t.numel()
        out.append(mean[offset:offset + n].reshape(t.shape).to(t.device, t.dtype))
        offset += n
    return out


def all_reduce_max(values: Sequence[float]) -> list[float]:
    """Element-wise maximum of ``values`` over the ranks (e.g. stop flags); ``values`` itself without a group."""
    values = [float(v) for v in values]
    if not _active():
        return values
    dev = _comm_device(torch.device("cpu"))
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` without a group)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def split_batch(total: int, rank: int, world: int, allow_empty: bool = False) -> int:
    """How many of ``total`` tasks rank ``rank`` of ``world`` takes: ``total // world``, plus one for the first
    ``total % world`` ranks; the counts sum to ``total``.

    Raises:
        ValueError: on a bad rank/world, or when ``total < world`` (some rank would get no task) unless
            ``allow_empty``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}) with world >= 1, got rank={rank}, world={world}")
    if total < 0 or (total < world and not allow_empty):
        raise ValueError(f"a batch of {total} tasks cannot be split over {world} processes (each needs at least "
                         f"one); use a meta-batch >= the number of processes")
    return total // world + (1 if rank < total % world else 0)


def batch_slice(total: int, rank: int, world: int, allow_empty: bool = False) -> slice:
    """The contiguous slice of a ``total``-task batch that rank ``rank`` takes (see :func:`split_batch`)."""
    start = sum(split_batch(total, r, world, allow_empty) for r in range(rank))
    return slice(start, start + split_batch(total, rank, world, allow_empty))


def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank ``rank``'s private stream: ``seed`` itself for rank 0 (so rank 0 of a data-parallel run
    draws what a one-process run draws); otherwise a 63-bit hash of ``(seed, rank)`` (``numpy``'s
    ``SeedSequence``), so streams of different ranks and of different seeds do not overlap as ``seed + rank``
    would."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), int(rank), 0x5EED]).generate_state(1, np.uint64)[0]
               & (2**63 - 1))


def broadcast_params(params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite every rank's tensors in place with rank ``src``'s (one flattened broadcast)."""
    tensors = list(params.values()) if isinstance(params, Mapping) else list(params)
    if not _active() or not tensors:
        return
    dev = _comm_device(tensors[0].device)
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1).to(dev) for t in tensors])
        dist.broadcast(flat, src=src)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].reshape(t.shape))
            offset += n


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if _active():
        dist.barrier()


def destroy() -> None:
    """Leave the process group if there is one (call once at the end of a script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
