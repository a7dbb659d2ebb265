"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class TSTError(Exception):
    """Bad input or configuration. The message names the thing and what was expected."""
