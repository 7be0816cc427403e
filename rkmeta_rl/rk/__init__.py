"""The Runge-Kutta meta-gradient engine: Butcher tableaus, the inner step and the meta-gradient."""

from .adaptation import adapt_and_score
from .analytic import AnalyticLoss, has_analytic
from .batched import TaskBatchedLoss, has_batched
from .inner_step import StepSizes, inner_step
from .meta_gradient import LossFn, Params, PerStage, adapt, choose_path, meta_gradient
from .method_spec import (
                          AdaptSpec,
                          MethodMap,
                          MethodSpec,
                          ParamGroups,
                          method_name,
                          method_slug,
                          parse_adapt,
                          parse_method_spec,
                          resolve_groups,
                          step_sizes,
)
from .tableau import PAPER_METHODS, TABLEAU_NAMES, Tableau, TableauSpec, generic, get_tableau, make_tableau

__all__ = [
    "adapt_and_score", "AnalyticLoss", "has_analytic", "TaskBatchedLoss", "has_batched",
    "StepSizes", "inner_step", "LossFn", "Params", "PerStage", "adapt", "choose_path",
    "meta_gradient", "AdaptSpec", "MethodMap", "MethodSpec", "ParamGroups", "method_name", "method_slug", "parse_adapt",
    "parse_method_spec", "resolve_groups", "step_sizes",
    "PAPER_METHODS", "TABLEAU_NAMES", "Tableau", "TableauSpec", "generic", "get_tableau", "make_tableau",
]
