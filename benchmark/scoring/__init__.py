"""The scoring engine: the metric registry, rank-sum tests, the embedding, the noise ceiling and references."""
