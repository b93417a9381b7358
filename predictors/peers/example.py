"""The worked example of docs/peers.md: mean shift computed in the `example_mean_shift` environment (numpy 1.26,
anndata 0.10 on Python 3.12, pins that conflict with pertbench's), through the worker."""

from __future__ import annotations

from benchmark.envs.foreign import DEFAULT_TIMEOUT, ForeignPredictor
from predictors.params import ValidatedParams, check_float, check_int


class ExampleMeanShift(ValidatedParams, ForeignPredictor):
    """Control cells + the perturbation's mean shift over training contexts, times `scale`, fitted and predicted
    in a worker of the example environment; NotApplicable for a perturbation never seen in training."""

    env_name = "example_mean_shift"

    def __init__(self, scale: float = 1.0, random_state: int = 0, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.scale = scale
        super().__init__(random_state=random_state, timeout=timeout)
        self._validate()

    def _validate(self) -> None:
        check_float("scale", self.scale, 0.0)
        check_int("random_state", self.random_state, 0, 2**32 - 1)
        check_float("timeout", self.timeout, 0.0, low_open=True)
