"""User-facing errors: the CLI prints their message on one line, without a traceback."""


class WmError(Exception):
    """A problem the user can fix (bad path, bad input, missing model); the message says which and how."""


def message_lines(exc: BaseException) -> list[str]:
    """`exc`'s message as its non-empty lines, stripped (empty for an empty message)."""
    return [line.strip() for line in str(exc).splitlines() if line.strip()]


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first non-empty line of `exc`'s message; `default` (else its type name) for an empty message."""
    return (message_lines(exc) or [default or type(exc).__name__])[0]


def one_line(exc: BaseException, keep: int = 2) -> str:
    """`exc`'s message on one line: its first `keep` non-empty lines joined, plus how many were left out.

    Library errors (torch's load_state_dict lists every mismatched tensor) can run to dozens of
    lines; a user-facing message stays one line.
    """
    lines = message_lines(exc) or [type(exc).__name__]
    more = f" ... ({len(lines) - keep} more)" if len(lines) > keep else ""
    return " ".join(lines[:keep]) + more
