"""Small shared utilities: the device resolver, threads, the atomic write, checks."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Callable, Literal, Mapping

import torch

__all__ = ["resolve_device", "get_device", "set_threads", "available_cores", "default_threads",
           "atomic_write", "write_json_atomic", "check_positive", "check_unit_interval"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The one device resolver: ``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` -> the current CUDA
    device (under torchrun the one :func:`~rkmeta_rl.distributed.init_distributed` pinned); anything else is
    parsed by ``torch.device``. Never falls back silently.

    Raises:
        ValueError: one line naming the bad value (an unknown device string, or CUDA asked for without CUDA).
    """
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available (use --device cpu or "
                             "auto)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type not in ("cpu", "meta"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}")
    return dev


#: The former name of :func:`resolve_device` (kept for callers outside the package).
get_device = resolve_device


def set_threads(n: int = 1) -> None:
    """Set torch's intra-op threads to ``n`` (at least 1)."""
    torch.set_num_threads(max(1, int(n)))


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: what ``taskset``, cgroups cpusets and batch
    schedulers leave it), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _positive_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes, machine-wide), or None where there is none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def default_threads(environ: Mapping[str, str] | None = None, load: float | None | Literal["now"] = "now") -> int:
    """The torch intra-op threads a training command uses when ``--threads`` is not given.

    In order:

    1. ``$OMP_NUM_THREADS`` when it is set to a positive integer (the user's choice; torchrun sets 1 when it is
       unset);
    2. under torchrun (``$WORLD_SIZE`` > 1): the cores this process may use divided among the processes on this
       node (``$LOCAL_WORLD_SIZE``), at least 1;
    3. otherwise the cores this process may use (:func:`available_cores`) that other jobs leave idle:
       ``min(cores, round(cpu_count - load))``, at least 1, with ``load`` the 1-minute load average at start.
       Measured on a 2-core machine with other jobs running (load average about 6), two threads made a 2D
       navigation meta-iteration 2-2.5x slower than one (README, "Threads"); on an idle machine every core is
       used. In a container the load average is the host's: pass ``--threads`` there.

    Args:
        environ: the environment (default ``os.environ``).
        load: the load average to use (``"now"``: read it; None: ignore load).
    """
    env = os.environ if environ is None else environ
    omp = _positive_int(env, "OMP_NUM_THREADS")
    if omp is not None:
        return omp
    cores = available_cores()
    world = _positive_int(env, "WORLD_SIZE") or 1
    if world > 1:
        local = _positive_int(env, "LOCAL_WORLD_SIZE") or world
        return max(1, cores // local)
    busy = _load_average() if load == "now" else load
    if busy is None:
        return cores
    idle = int((os.cpu_count() or cores) - busy + 0.5)
    return max(1, min(cores, idle))


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = True, mode: int | None = None) -> str:
    """The one atomic write: ``write(fh)`` fills a temporary file in ``path``'s folder, which is flushed,
    fsync-ed and renamed onto ``path`` (``os.replace`` is atomic on POSIX and Windows), so ``path`` always holds
    either its previous complete content or the new complete one. On any error the temporary file is removed.
    ``mode`` sets the file's permissions (the temporary file is created 0600).

    Returns:
        ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` with :func:`atomic_write`."""

    def write(fh: Any) -> None:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")

    atomic_write(path, write, binary=False)


def check_positive(name: str, value: float, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite positive number (or integer)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = value >= 0 if allow_zero else value > 0
    if not ok:
        kind = "integer" if integer else "number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite {kind} {bound}, got {value!r}")


def check_unit_interval(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``0 < value <= 1`` (a discount, GAE's lambda, a fraction)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0 < value <= 1):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
