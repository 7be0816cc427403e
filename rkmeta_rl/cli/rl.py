"""What the meta-RL commands (``nav``, ``locomotion``) share: policy flags, the config, building and finishing
a :class:`~rkmeta_rl.rl.algorithm.MetaTRPO`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterable, Mapping

from ..distributed import DistInfo
from ..rl.algorithm import MetaTRPO
from ..rl.config import MetaTRPOConfig
from ..rl.policy import ACTIVATIONS
from .flags import add_config_flags, config_from_args
from .runner import add_run_flags

__all__ = ["make_rl_parser", "rl_config", "build_metatrpo", "finish_metatrpo"]


def make_rl_parser(doc: str | None, presets: Mapping[str, MetaTRPOConfig], default: str, skip: Iterable[str] = ()
                   ) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of a meta-RL command: ``--config``, every ``MetaTRPOConfig`` field, the policy's shape and
    the run flags. Returns the parser and the fields that have a flag."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=tuple(presets), default=default,
                   help="preset (rkmeta_rl.presets); flags given explicitly override it (default: %(default)s)")
    fields = add_config_flags(p, MetaTRPOConfig, presets[default], default, skip=("policy_kwargs", *skip))
    pk = presets[default].policy_kwargs
    g = p.add_argument_group("policy (the policy_kwargs field)")
    g.add_argument("--hidden-sizes", default=None, help="hidden layer widths, comma separated (default: "
                   f"{','.join(map(str, pk.get('hidden_sizes', (100, 100))))}, from --config {default})")
    g.add_argument("--activation", choices=sorted(ACTIVATIONS), default=None,
                   help=f"hidden activation (default: {pk.get('activation', 'relu')}, from --config {default})")
    add_run_flags(p)
    return p, fields


def rl_config(presets: Mapping[str, MetaTRPOConfig], args: argparse.Namespace, fields: Iterable[str],
              **extra: Any) -> MetaTRPOConfig:
    """The preset of ``--config`` with the flags given explicitly (and ``extra``) put in."""
    preset = presets[args.config]
    policy = dict(preset.policy_kwargs)
    if args.hidden_sizes is not None:
        try:
            policy["hidden_sizes"] = tuple(int(h) for h in args.hidden_sizes.split(",") if h.strip())
        except ValueError:
            raise ValueError(f"--hidden-sizes must be comma-separated integers, got {args.hidden_sizes!r}") from None
        if not policy["hidden_sizes"] or min(policy["hidden_sizes"]) < 1:
            raise ValueError(f"--hidden-sizes must be comma-separated positive integers, got {args.hidden_sizes!r}")
    if args.activation is not None:
        policy["activation"] = args.activation
    config = config_from_args(preset, args, fields, {"policy_kwargs": policy, **extra})
    assert isinstance(config, MetaTRPOConfig)
    return config


def build_metatrpo(args: argparse.Namespace, config: MetaTRPOConfig, dist: DistInfo, logdir: str) -> MetaTRPO:
    """The model of a run (fresh or ``--resume``d) in ``logdir``."""
    assert config.env is not None
    return MetaTRPO("MlpPolicy", config.env, config=config, logdir=logdir, resume=args.resume,
                    verbose=int(args.verbose), dist=dist)


def finish_metatrpo(args: argparse.Namespace, model: MetaTRPO, **extra: Any) -> dict[str, Any]:
    """``metrics.json`` (the model's summary and ``extra``), hparams, close."""
    metrics = {**model.summary(), **extra}
    out = model.finish(metrics)
    model.close()
    return out


def replace_env(config: MetaTRPOConfig, env: str) -> MetaTRPOConfig:
    """``config`` with ``env``."""
    return dataclasses.replace(config, env=env)
