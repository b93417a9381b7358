"""pertbench: an honest benchmarking harness for single-cell perturbation-response predictors."""

from benchmark.core.errors import NotApplicable, PertbenchError
from benchmark.core.protocol import Predictor
from benchmark.core.task import Task

__version__ = "0.1.0"
__all__ = ["NotApplicable", "PertbenchError", "Predictor", "Task", "__version__"]
