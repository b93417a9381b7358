"""Built-in predictors of pertbench and the registry that names them."""

from predictors.registry import available_predictors, make_predictor

__all__ = ["available_predictors", "make_predictor"]
