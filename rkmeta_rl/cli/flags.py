"""Command-line flags generated from the config dataclasses, so flags and fields cannot drift apart.

Every field of an algorithm's config becomes ``--field-name`` (``_`` -> ``-``; a few are renamed, see
:data:`RENAMED`), defaulting to ``None`` so that only flags given explicitly override the chosen preset
(``--config``); the help text shows the default preset's value. Booleans take ``--x`` / ``--no-x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, Iterable, Mapping

from ..common.config import BaseConfig
from ..rk.meta_gradient import PATHS

__all__ = ["FIELD_HELP", "RENAMED", "add_config_flags", "config_from_args", "flag_name"]

#: One help text per config field (every field of every config has one).
FIELD_HELP: dict[str, str] = {
    "method": "RK method: euler, midpoint (MAML), heun, ralston, itb, generic(x) or a number x > 0",
    "iterations": "meta-iterations of the run (a resumed run may raise it)",
    "inner_lr": "MAML's inner learning rate alpha (see --step-rule)",
    "inner_steps": "inner gradient steps in training",
    "step_rule": "tableau: adapt with 2 q21 inner_lr (midpoint is MAML); fixed: every method adapts with inner_lr",
    "first_order": "drop the second-order terms through the inner step",
    "adapt": "parameter glob(s) the inner loop moves, comma separated (default: all parameters)",
    "seed": "seeds initialisation and every random stream",
    "device": "auto | cpu | cuda | cuda:N",
    "log_interval": "iterations between log rows",
    "checkpoint_interval": "iterations between checkpoints",
    "time_budget_min": "stop cleanly (checkpoint, metrics.json) after this many minutes of training",
    "threads": ("torch intra-op threads per process (none: $OMP_NUM_THREADS if set, else under torchrun the "
                "cores / processes on the node, else every core this process may use that other jobs leave idle "
                "by the load average)"),
    "env": "task family: a built-in name, a registered id, or module:Id",
    "meta_batch_size": "tasks per meta-iteration",
    "fast_batch_size": "trajectories per task for each of D0 and D1",
    "max_kl": "TRPO's KL trust region",
    "cg_iters": "conjugate-gradient iterations",
    "cg_damping": "damping added to the Fisher-vector product",
    "ls_backtrack_ratio": "line-search step shrink factor, in (0, 1)",
    "ls_max_steps": "line-search steps",
    "gamma": "discount, in (0, 1]",
    "gae_lambda": "GAE lambda, in (0, 1]",
    "horizon": "episode horizon (default: the family's max_episode_steps)",
    "fvp_subsample": "fraction of steps the Fisher-vector product uses (1: exact; gradient and line search use all)",
    "normalize_advantages": "standardise advantages per task",
    "sampler": "auto (a family's torch twin, else batched) | twin | batched | gym (the slow reference loop)",
    "num_workers": "env worker processes of the batched sampler (results do not depend on it)",
    "policy_kwargs": "policy settings (see --hidden-sizes, --activation)",
    "test_inner_steps": "inner steps scored at evaluation",
    "meta_lr": "Adam's learning rate",
    "path": "engine execution path: " + " | ".join(PATHS),
    "compile": ("torch.compile the vectorised meta-gradient from the first iteration (--no-compile: never; none: "
                "when it pays, float32 MLPs on the CPU after a few seconds); a failed compile falls back to eager "
                "with a warning"),
    "eval_interval": "iterations between evaluations during training (0: never)",
    "eval_tasks": "tasks per evaluation during training",
    "final_eval_tasks": "tasks (episodes) of the final evaluation",
    "eval_chunk": "tasks adapted at once at evaluation (memory bound)",
    "train_chunk": ("tasks per meta-gradient program in training (memory bound; default: all, or the analytic "
                    "path's own chunks for large tasks)"),
    "diagnostics_interval": ("iterations between the forward-only diagnostics query_loss_pre and "
                             "support_loss_post (and, for one-stage methods such as euler, query_loss_post): "
                             "extra forward passes per task; 1: every iteration"),
    "dataset": "omniglot | miniimagenet",
    "ways": "classes per episode",
    "shots": "support images per class",
    "queries": "query images per class in training",
    "test_queries": "query images per class at evaluation (default: --queries)",
    "split_seed": "Omniglot character-split seed (default: the fixed canonical split)",
    "filters": "conv4 filters per layer",
    "pool": "stride (strided convolutions) | max (max-pooling)",
    "val_characters": "Omniglot: validation characters carved out of the 1200 training ones",
}

#: Fields whose flag is not ``--field-name``.
RENAMED: dict[str, str] = {"time_budget_min": "--time-budget", "final_eval_tasks": "--eval-tasks",
                           "eval_tasks": "--val-tasks"}

#: Choices of string fields.
CHOICES: dict[str, tuple[str, ...]] = {"step_rule": ("tableau", "fixed"), "path": PATHS,
                                       "pool": ("stride", "max"), "dataset": ("omniglot", "miniimagenet"),
                                       "sampler": ("auto", "twin", "batched", "gym")}


def flag_name(field: str) -> str:
    """The flag of a config field."""
    return RENAMED.get(field, "--" + field.replace("_", "-"))


def in_flag_terms(message: str) -> str:
    """``message`` with every config field written with an underscore (``final_eval_tasks``) replaced by its
    flag (``--eval-tasks``), so a command-line user reads the name they typed."""
    names = sorted((f for f in FIELD_HELP if "_" in f), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    return pattern.sub(lambda m: flag_name(m.group(1)), message)


def _metavar(field: str) -> str | None:
    """The placeholder shown in ``--help`` (from the flag's name, so renamed flags read right)."""
    if field in CHOICES:
        return None
    return "MINUTES" if field == "time_budget_min" else flag_name(field)[2:].upper().replace("-", "_")


def _scalar_type(hint: Any) -> type:
    """``int`` / ``float`` / ``str`` / ``bool`` of a field's type hint (``Optional[X]`` -> ``X``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint if hint in (int, float, str, bool) else str


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type[BaseConfig], default: BaseConfig,
                     default_name: str, skip: Iterable[str] = ()) -> list[str]:
    """Add one flag per field of ``config_cls`` (except ``skip``); returns the fields that got one."""
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"settings ({config_cls.__name__} fields; override the preset)")
    fields = []
    for f in dataclasses.fields(config_cls):
        if f.name in set(skip):
            continue
        kind = _scalar_type(hints[f.name])
        value = getattr(default, f.name)
        shown = "none" if value is None else value
        text = f"{FIELD_HELP[f.name]} (default: {shown}, from --config {default_name})"
        if kind is bool:
            group.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=text)
        else:
            group.add_argument(flag_name(f.name), dest=f.name, type=kind, default=None,
                               choices=CHOICES.get(f.name), metavar=_metavar(f.name), help=text)
        fields.append(f.name)
    return fields


def config_from_args(preset: BaseConfig, args: argparse.Namespace, fields: Iterable[str],
                     extra: Mapping[str, Any] | None = None) -> BaseConfig:
    """``preset`` with every flag given explicitly (and ``extra``) put in."""
    given = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    given.update(extra or {})
    return dataclasses.replace(preset, **given)
