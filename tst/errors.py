"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class TSTError(Exception):
    """Bad input or configuration. The message names the thing and what was expected."""


def rekeyed(error: TSTError, prefix: str, new_prefix: str) -> TSTError:
    """`error` with a leading config key moved from under `prefix` to under `new_prefix`: a space's
    builder names its keys `space.<key>`, and when the space is a transfer space the user wrote them
    under `collect.transfer_spaces[i].`. Messages that do not start with `prefix` come back unchanged."""
    message = str(error)
    return TSTError(new_prefix + message[len(prefix):]) if message.startswith(prefix) else error
