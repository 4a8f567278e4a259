"""User-facing errors: the CLI prints their message on one line, without a traceback."""


class WmError(Exception):
    """A problem the user can fix (bad path, bad input, missing model); the message says which and how."""


def one_line(exc: BaseException, keep: int = 2) -> str:
    """`exc`'s message on one line: its first `keep` non-empty lines joined, plus how many were left out.

    Library errors (torch's load_state_dict lists every mismatched tensor) can run to dozens of
    lines; a user-facing message stays one line.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    more = f" ... ({len(lines) - keep} more)" if len(lines) > keep else ""
    return " ".join(lines[:keep]) + more
