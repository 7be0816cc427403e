"""Run records: a finished run's numbers in a small JSON file meant to be committed.

A training run's folder (checkpoints, TensorBoard events, ``metrics.json``) is large and lives on the machine that
ran it; studies and reproduction reports that take hours must not depend on it surviving. When a study finishes a
run it writes a *record*: the run's portable command line (dataset folders given as their environment variable,
no run folder, no interpreter path), its ``metrics.json`` and whatever else its report needs (an evaluation curve,
say). A report is then rebuilt from the records alone, and a study that finds a record for a run with the same
command counts the run as finished and does not train it again.

A run *folder* counts for a command only when it was made by that command: every start of a training script
writes the command line it was given into the folder's ``config.json`` (``argv``), and a folder whose recorded
command computes something else (other iterations, another method, ...) is never taken as this run's, neither
its ``metrics.json`` nor its checkpoints (:func:`folder_matches`). Where and how a run was launched does not
count: its folder, the dataset's location, ``--device`` and ``--resume``.

Record file (JSON): ``{"command": [...], "metrics": {...}, "recorded": "ISO date", "host": "...", ...extra}``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from typing import Any, Callable, Sequence

from rkmeta_rl.utils import write_json_atomic

#: the dataset flag -> the environment variable a portable command names instead of the folder (``--data-root``
#: names either dataset's folder: its caller says which variable)
DATA_FLAGS: dict[str, str | None] = {"--data-root": None, "--omniglot-root": "RKMETA_OMNIGLOT",
                                     "--miniimagenet-root": "RKMETA_MINIIMAGENET"}
#: flags whose value is where a run is written, not what it computes
PLACE_FLAGS = ("--logdir",)
#: flags a study adds when it launches or continues a run (with how many values), which do not change what it
#: computes
LAUNCH_FLAGS: dict[str, int] = {"--resume": 0, "--device": 1}


def portable_command(args: Sequence[str], data_env: str | None = None) -> list[str]:
    """``args`` without what depends on the machine: a dataset folder becomes ``$VARIABLE`` (``data_env`` if
    given, else the variable :data:`DATA_FLAGS` names) and ``--logdir PATH`` is dropped.

    >>> portable_command(["--seed", "0", "--data-root", "/x/omniglot", "--logdir", "runs/a"], "RKMETA_OMNIGLOT")
    ['--seed', '0', '--data-root', '$RKMETA_OMNIGLOT']
    """
    out: list[str] = []
    it = iter(args)
    for a in it:
        name, eq, _ = a.partition("=")
        if name in PLACE_FLAGS:
            if not eq:
                next(it, None)
            continue
        if name in DATA_FLAGS:
            env = data_env or DATA_FLAGS[name]
            if env is None:
                raise ValueError(f"portable_command: {name} needs data_env, the variable that names its folder")
            out += [name, f"${env}"]
            if not eq:
                next(it, None)
            continue
        out.append(a)
    return out


def _comparable(command: Sequence[str]) -> list[str]:
    """``command`` (script first) as :func:`folder_matches` compares it: the script's file name, no place or
    launch flags, every dataset location ``*``."""
    out = [os.path.basename(command[0])] if command else []
    it = iter(command[1:])
    for a in it:
        name, eq, _ = a.partition("=")
        if name in PLACE_FLAGS or name in LAUNCH_FLAGS:
            for _ in range(0 if eq else LAUNCH_FLAGS.get(name, 1)):  # skip the flag's separate values
                next(it, None)
            continue
        if name in DATA_FLAGS:
            out += [name, "*"]
            if not eq:
                next(it, None)
            continue
        out.append(a)
    return out


def folder_command(logdir: str) -> list[str] | None:
    """The command line (script first) that last started the run in ``logdir``, from its ``config.json``; None
    when the folder does not say."""
    path = os.path.join(logdir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            argv = json.load(fh).get("argv")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(a) for a in argv] if isinstance(argv, list) and argv else None


def folder_matches(logdir: str, command: Sequence[str]) -> bool:
    """Whether run folder ``logdir`` may be this ``command``'s run (script first, portable or not): False when
    its ``config.json`` records a command that computes something else; True when it records the same one, or
    none (a folder written by hand, or before commands were recorded)."""
    made_by = folder_command(logdir)
    return made_by is None or _comparable(made_by) == _comparable(command)


def write_record(path: str, command: Sequence[str], metrics: dict[str, Any], **extra: Any) -> None:
    """Write (atomically) the record of a finished run to ``path``."""
    import torch

    write_json_atomic(path, {
        "command": list(command), "metrics": metrics,
        "recorded": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}", **extra})


def read_record(path: str, command: Sequence[str]) -> dict[str, Any] | None:
    """The record at ``path`` if it exists and was made by the same portable ``command``, else None (a record of
    another configuration does not count as this run)."""
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        record = json.load(fh)
    return record if record.get("command") == list(command) else None


def finished_metrics(logdir: str, record_path: str, command: Sequence[str],
                     extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """A run's ``metrics.json``: from its folder ``logdir`` when there and made by ``command`` (writing its record
    first if it has none yet, with ``extra()`` added), else from its record; None when the run has not finished.

    ``record_path`` empty: the folder alone counts (no record is read or written).
    """
    path = os.path.join(logdir, "metrics.json")
    if os.path.isfile(path) and folder_matches(logdir, command):
        with open(path) as fh:
            metrics = json.load(fh)
        if record_path and read_record(record_path, command) is None:
            write_record(record_path, command, metrics, **(extra() if extra is not None else {}))
        return metrics
    rec = read_record(record_path, command) if record_path else None
    return None if rec is None else rec["metrics"]
