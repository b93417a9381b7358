"""Datasets: cards and loading, validation, the synthetic generator, the split manager, prediction export."""
