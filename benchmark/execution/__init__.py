"""Running predictors: the runner, `bench score`, the model cache, sweeps and their executors."""
