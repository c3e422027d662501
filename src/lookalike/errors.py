"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class LookalikeError(Exception):
    """A mistake in the user's input (path, field, value, config) that we can name precisely."""
