"""The Runge-Kutta meta-gradient engine: Butcher tableaus and the meta-gradient (DESIGN.md section 1)."""

from .adaptation import adapt_and_score
from .meta_gradient import LossFn, Params, PerStage, adapt, choose_path, meta_gradient
from .tableau import PAPER_METHODS, TABLEAU_NAMES, Tableau, TableauSpec, generic, get_tableau, make_tableau

__all__ = [
    "adapt_and_score", "LossFn", "Params", "PerStage", "adapt", "choose_path", "meta_gradient",
    "PAPER_METHODS", "TABLEAU_NAMES", "Tableau", "TableauSpec", "generic", "get_tableau", "make_tableau",
]
