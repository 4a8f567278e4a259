"""User-facing errors: the CLI prints their message on one line, without a traceback."""


class WmError(Exception):
    """A problem the user can fix (bad path, bad input, missing model); the message says which and how."""
