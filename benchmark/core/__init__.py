"""The harness's vocabulary: the task, the predictor protocol, errors, pseudobulks, progress bars, files."""
