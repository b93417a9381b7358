"""Published models that run in their own pinned environments (benchmark.envs), one wrapper per model."""
