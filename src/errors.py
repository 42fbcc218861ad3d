"""The one exception type that stages raise for bad input or bad params."""


class PipelineError(Exception):
    """A problem with the user's input, reported as one line (file, row or key, and what is wrong)."""
