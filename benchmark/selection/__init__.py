"""Choosing hyperparameters on validation splits of training cells: `bench tune` and the defaults chooser."""
