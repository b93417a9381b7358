"""pertbench: an honest benchmarking harness for single-cell perturbation-response predictors."""

from benchmark.errors import NotApplicable, PertbenchError
from benchmark.protocol import Predictor
from benchmark.task import Task

__version__ = "0.1.0"
__all__ = ["NotApplicable", "PertbenchError", "Predictor", "Task", "__version__"]
