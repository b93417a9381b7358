"""Exceptions the harness turns into one-line messages or 'not applicable' records."""


class PertbenchError(Exception):
    """A user-facing problem (bad input, unknown name): the CLI prints it as one line, no traceback."""


class NotApplicable(Exception):
    """Raised by a predictor for a target it cannot predict (e.g. a combination of unseen genes).

    The harness records the split as 'not applicable' with this message instead of failing the run.
    """
