"""The base of every typed file the project reads (params.yaml, the corpus lock): strict pydantic groups and
errors that name the file, the dotted key, the bad value and what is allowed."""

from __future__ import annotations

import difflib
import typing

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A params file, corpus spec or override is invalid; the message names the key."""


class Group(BaseModel):
    """A group of keys: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def format_error(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One line per error: `source: dotted.key: message (got value)`; unknown keys get the allowed ones (of `root`)."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)" + allowed_keys_hint(e["loc"], root)
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: {key}: {msg}{got_s}")
    return "\n".join(lines)


def allowed_keys_hint(loc: tuple[str | int, ...], root: type[BaseModel]) -> str:
    """"; did you mean 'x'? allowed: a, b, ..." for an unknown key at `loc` (empty if the group is unknown)."""
    model: type[BaseModel] = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an index into a list of groups (train.progressive.0.crop)
        field = model.model_fields.get(part)
        inner = [field.annotation, *typing.get_args(field.annotation)] if field else []
        groups = [t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)]
        if not groups:
            return ""
        model = groups[0]
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    return (f"; did you mean {close[0]!r}?" if close else "") + f" allowed: {', '.join(allowed)}"
