"""When the vectorised meta-gradient runs through ``torch.compile`` by itself, and the cache of compiled programs.

``meta_gradient(..., compile="auto")`` (the default) runs the eager ``vmap`` program until the same program has
been asked for often enough that compiling pays, then compiles it once and reuses it:

* **program**: one key per (plan, loss functions, ``stats``, ``chunk_size``): everything that changes the traced
  program. The loss functions are part of the key (held by it), so pass the same function objects call after
  call; a fresh ``lambda`` per call is a new program every time and never compiles by itself.
* **the rule** (``compile="auto"``): a program is compiled once one call signature (the program plus the shapes,
  dtypes and devices of the parameters and the task data) has been run eagerly at least :data:`AUTO_MIN_CALLS`
  times *and* for at least :data:`AUTO_MIN_EAGER_SECONDS` seconds in all. One-off calls (tests, evaluation,
  a short script) stay eager and never pay a compile (about 20-30 s on a CPU core for the sinusoid MLP);
  a training run compiles after a few seconds and then runs several times faster
  (``scripts/bench_meta_gradient.py``).
* **never by itself** (``compile="auto"`` stays eager, ``compile=True`` still compiles): parameters with 3 or
  more dimensions (convolution kernels: compiling the second-order conv program is slow and not measured to
  pay), tensors other than float32 (float64 reference and test code), a device other than the CPU (not measured
  here; ``scripts/gpu_check.py`` times compiled against eager on CUDA), a call made while ``torch.compile`` is
  already tracing, a ``torch.distributed`` run (ranks would compile at different moments, the others waiting in
  a collective that times out), and ``RKMETA_COMPILE=0``. CUDA graphs (``mode="reduce-overhead"``) are never
  used by ``"auto"``.
* **failure**: when compiling or a compiled call raises, a ``RuntimeWarning`` names the error, the call is
  answered by the eager program, and that program is never compiled again in this process.

``RKMETA_COMPILE``: ``0`` (auto never compiles), ``1`` (auto compiles an eligible program on its first call),
unset or ``auto`` (the rule above). The test suite sets ``0`` (``tests/conftest.py``).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
from torch.utils._pytree import tree_leaves

__all__ = ["CompileMode", "AUTO_MIN_CALLS", "AUTO_MIN_EAGER_SECONDS", "COMPILE_OPTIONS", "ENV_VAR", "check_mode",
           "auto_blocker", "signature", "run", "compiled_programs", "clear"]

CompileMode = bool | Literal["auto"]
Program = Callable[..., Any]

_log = logging.getLogger(__name__)

#: eager calls of one call signature before ``compile="auto"`` compiles its program
AUTO_MIN_CALLS: int = 3
#: eager seconds spent on one call signature before ``compile="auto"`` compiles its program
AUTO_MIN_EAGER_SECONDS: float = 5.0
#: the environment switch of ``compile="auto"``
ENV_VAR = "RKMETA_COMPILE"
#: keyword arguments of ``torch.compile`` (part of every program key). Benchmarks may set others, e.g.
#: ``mode="reduce-overhead"`` (CUDA graphs) in ``scripts/gpu_check.py``; ``compile="auto"`` never changes them.
COMPILE_OPTIONS: dict[str, Any] = {"dynamic": False}
#: call signatures whose eager calls are counted (least recently used ones are forgotten beyond this)
_MAX_COUNTED = 256


@dataclass
class _Count:
    """Eager calls and seconds of one call signature."""

    calls: int = 0
    seconds: float = 0.0


#: compiled programs by program key; ``None`` marks a program whose compilation failed (eager from then on)
_PROGRAMS: dict[tuple, Program | None] = {}
#: eager use per call signature (for ``compile="auto"``)
_COUNTS: OrderedDict[tuple, _Count] = OrderedDict()
#: call signatures a compiled program has answered (auto reuses the program for these without counting; a new
#: shape is counted anew, as it would recompile)
_COMPILED_SIGNATURES: set[tuple] = set()


def check_mode(compile: Any) -> None:
    """Raise ``ValueError`` naming the bad value unless ``compile`` is ``True``, ``False`` or ``"auto"``, and the
    same for a set ``$RKMETA_COMPILE``."""
    if not (compile is True or compile is False or compile == "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    _env_setting()


def _env_setting() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in ("0", "1", "auto"):
        raise ValueError(f"{ENV_VAR} must be 0, 1 or auto, got {os.environ[ENV_VAR]!r}")
    return value


def auto_blocker(params: Mapping[str, torch.Tensor], task_data: Any) -> str | None:
    """Why ``compile="auto"`` must not compile for these parameters and data (``None``: it may)."""
    if _env_setting() == "0":
        return f"{ENV_VAR}=0"
    if torch.compiler.is_compiling():
        return "called while torch.compile is tracing"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # each rank would compile at its own moment while the others wait in a collective (which times out)
        return "a torch.distributed run (pass compile=True: every rank compiles on its first call)"
    tensors = list(params.values()) + [x for x in tree_leaves(task_data) if isinstance(x, torch.Tensor)]
    if any(p.dim() >= 3 for p in params.values()):
        return "a parameter with 3 or more dimensions (convolution kernel)"
    if any(t.device.type != "cpu" for t in tensors):
        return "a tensor not on the CPU"
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        return "a floating-point tensor other than float32"
    return None


def signature(program_key: tuple, params: Mapping[str, torch.Tensor], task_data: Any) -> tuple:
    """The call signature: the program key plus every tensor's shape, dtype and device."""
    leaves = list(params.items()) + [("", x) for x in tree_leaves(task_data)]
    return program_key + tuple((k, tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else (k, x)
                               for k, x in leaves)


def _count(sig: tuple) -> _Count:
    c = _COUNTS.get(sig)
    if c is None:
        c = _COUNTS[sig] = _Count()
        while len(_COUNTS) > _MAX_COUNTED:
            _COUNTS.popitem(last=False)
    else:
        _COUNTS.move_to_end(sig)
    return c


def _decide(compile: CompileMode, program_key: tuple, sig: tuple, params: Mapping[str, torch.Tensor],
            task_data: Any) -> tuple[bool, bool]:
    """``(compile now, count this eager call)`` for one call."""
    if compile is False or _PROGRAMS.get(program_key, True) is None:  # off, or failed before
        return False, False
    if compile is True:
        return True, False
    if auto_blocker(params, task_data) is not None:  # never by itself: not counted (nor kept alive) either
        return False, False
    if sig in _COMPILED_SIGNATURES or _env_setting() == "1":
        return True, False
    c = _COUNTS.get(sig)
    return (c is not None and c.calls >= AUTO_MIN_CALLS and c.seconds >= AUTO_MIN_EAGER_SECONDS), True


def run(program_key: tuple, build: Callable[[], Program], args: tuple, compile: CompileMode,
        params: Mapping[str, torch.Tensor], task_data: Any) -> Any:
    """``build()(*args)``, through the cached ``torch.compile`` of ``build()`` when ``compile`` says so.

    Args:
        program_key: hashable; equal keys must build the same program.
        build: makes the eager program.
        args: its arguments.
        compile: ``True`` (compile), ``False`` (eager) or ``"auto"`` (the rule of this module).
        params, task_data: what :func:`auto_blocker` and :func:`signature` look at.
    """
    program_key = program_key + (tuple(sorted(COMPILE_OPTIONS.items())),)
    sig = signature(program_key, params, task_data)
    now, count = _decide(compile, program_key, sig, params, task_data)
    if now:
        fn = _PROGRAMS.get(program_key)
        try:
            if fn is None:
                # one fused graph of the nested vmap/grad program: several times fewer seconds per call for
                # small MLPs on CPU, after a first call that compiles for tens of seconds
                c = _COUNTS.get(sig)
                _log.info("compiling the meta-gradient with torch.compile (%s): the first compiled call takes tens "
                          "of seconds", "asked for" if compile is True or c is None else
                          f"after {c.calls} eager calls, {c.seconds:.1f} s")
                fn = torch.compile(build(), **COMPILE_OPTIONS)
                _PROGRAMS[program_key] = fn
            out = fn(*args)
            _COMPILED_SIGNATURES.add(sig)
            return out
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to the eager program
            _PROGRAMS[program_key] = None
            count = False
            warnings.warn(f"torch.compile of the meta-gradient failed ({type(err).__name__}: {err}); using the "
                          "eager program for these loss functions and settings from now on", RuntimeWarning,
                          stacklevel=4)
    t0 = time.perf_counter()
    out = build()(*args)
    if count:
        c = _count(sig)
        c.calls += 1
        c.seconds += time.perf_counter() - t0
    return out


def compiled_programs() -> int:
    """How many programs are compiled now (failed ones not counted)."""
    return sum(fn is not None for fn in _PROGRAMS.values())


def clear() -> None:
    """Forget every compiled program, failure and count."""
    _PROGRAMS.clear()
    _COUNTS.clear()
    _COMPILED_SIGNATURES.clear()
