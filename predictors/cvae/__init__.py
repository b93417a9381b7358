"""Conditional VAE perturbation-response predictor (modes A and B share one fitted model)."""

from predictors.cvae.model import CVAEPredictor

__all__ = ["CVAEPredictor"]
