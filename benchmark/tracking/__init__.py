"""Everything that talks to MLflow: the store, the record's schema, run lifecycle, logging and read-back,
the UI helpers. MLflow's environment defaults are set here, before any of these modules imports it."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow prints "View run ... at: <server URL>" per run against a server: bench prints where runs went itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# A tracking server that stops answering must end `bench` with an error within a minute, not hang for minutes
# (MLflow's defaults: 120 s per request, 7 retries with exponential backoff). One request now waits at most
# 10 s and is retried once; a failed run needs at most two such requests before bench stops. Override any of
# these in the environment.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
for _name, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
