"""What the supervised commands (``sinusoid``, ``fewshot``) share: the parser and the end of a run."""

from __future__ import annotations

import argparse
import os
from typing import Any, Iterable, Mapping

from ..common.config import BaseConfig
from ..supervised.trainer import MetaTrainer
from .flags import add_config_flags
from .runner import add_run_flags

__all__ = ["make_supervised_parser", "finish_supervised"]


def make_supervised_parser(doc: str | None, config_cls: type[BaseConfig], presets: Mapping[str, BaseConfig] |
                           Iterable[str], default: str, default_config: BaseConfig, label: str | None = None
                           ) -> tuple[argparse.ArgumentParser, list[str]]:
    """``--config`` (a preset name), one flag per field of ``config_cls`` (help: ``default_config``'s values,
    called ``label``, default ``default``), the run flags."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=tuple(presets), default=default,
                   help="preset (rkmeta_rl.presets); flags given explicitly override it (default: %(default)s)")
    fields = add_config_flags(p, config_cls, default_config, label or default)
    add_run_flags(p)
    return p, fields


def finish_supervised(trainer: MetaTrainer, metrics: Mapping[str, Any], figure_name: str) -> dict[str, Any]:
    """``metrics.json`` and hparams (:meth:`MetaTrainer.write_metrics`), then the problem's figure saved as
    ``figure_name`` in the run folder (rank 0)."""
    out = trainer.write_metrics(metrics)
    if trainer.is_main and trainer.logdir is not None:
        trainer.figure().savefig(os.path.join(trainer.logdir, figure_name), dpi=110)
    return out
