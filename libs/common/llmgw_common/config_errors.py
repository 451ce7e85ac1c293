"""Config problems people can act on, from pydantic's validation errors.

Paths are written as in the YAML (``providers[2].command``), without the provider type pydantic puts in
a tagged union's path; a field of another provider type says so (``not a field of an openai provider``);
a misspelt name gets the nearest valid one (``did you mean `strategy`?``). Generic over the schema: it
walks the model classes along each error's location, so this module knows no field by name.
"""

from __future__ import annotations

import difflib
import re
import types
from typing import Annotated, Any, Iterable, Mapping, Sequence, Union, get_args, get_origin

from pydantic import BaseModel, Tag

Problem = tuple[str, str]  # (field path, message)


def suggestion(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean `x`?)`` for the valid name nearest to ``word``, or nothing."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _listed(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _unwrap(t: Any) -> Any:
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    return t


def _tags(union: Any) -> dict[str, Any]:
    """A tagged union's members by tag (empty: not a tagged union)."""
    out = {}
    for member in get_args(union):
        if get_origin(member) is Annotated:
            for meta in member.__metadata__:
                if isinstance(meta, Tag):
                    out[meta.tag] = get_args(member)[0]
    return out


def _is_union(t: Any) -> bool:
    return get_origin(t) in (Union, types.UnionType)


def _step(t: Any, part: Any) -> Any:
    """The type found at ``part`` inside ``t`` (None: the schema has nothing there)."""
    t = _unwrap(t)
    if _is_union(t):
        for member in get_args(t):
            if member is not type(None) and (found := _step(member, part)) is not None:
                return found
        return None
    origin = get_origin(t)
    if origin in (list, tuple, set, frozenset) and isinstance(part, int):
        return get_args(t)[0]
    if origin is dict and isinstance(part, str):
        return get_args(t)[1]
    if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str) and part in t.model_fields:
        return t.model_fields[part].annotation
    return None


class _Place:
    """Where an error's location leads: the path as written, the raw value there, the schema type there,
    and the last tagged union passed (its tag and members: a provider's type and the other types)."""

    def __init__(self, root: type[BaseModel], data: Any, loc: tuple[Any, ...]):
        self.parts: list[Any] = []
        self.value: Any = data
        self.type: Any = root
        self.tag: str | None = None
        self.tag_members: dict[str, Any] = {}
        for part in loc:
            members = _tags(_unwrap(self.type))
            if isinstance(part, str) and part in members:  # pydantic's step into a union member: not in the YAML
                self.tag, self.tag_members, self.type = part, members, members[part]
                continue
            self.type = _step(self.type, part) if self.type is not None else None
            self.parts.append(part)
            if isinstance(self.value, dict):
                self.value = self.value.get(part)
            elif isinstance(self.value, list) and isinstance(part, int) and 0 <= part < len(self.value):
                self.value = self.value[part]
            else:
                self.value = None

    @property
    def path(self) -> str:
        return field_path(self.parts)

    def model_fields(self) -> list[str]:
        t = _unwrap(self.type)
        return list(t.model_fields) if isinstance(t, type) and issubclass(t, BaseModel) else []


def field_path(parts: Iterable[Any]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
    return path


def _unknown_field(root: type[BaseModel], data: Any, loc: tuple[Any, ...]) -> Problem:
    parent = _Place(root, data, loc[:-1])
    name = loc[-1]
    path = field_path([*parent.parts, name])
    fields = parent.model_fields()
    hint = suggestion(name, fields)
    if parent.tag is None or parent.tag_members.get(parent.tag) is not _unwrap(parent.type):  # not on the member itself
        return path, f"unknown field{hint}"
    message = f"not a field of {article(parent.tag)} {parent.tag} provider"
    owners = [tag for tag, cls in parent.tag_members.items() if name in getattr(cls, "model_fields", {})]
    if owners:
        message += f" (only {_listed(owners)} providers have it)"
    return path, message + hint


def _unknown_tag(root: type[BaseModel], data: Any, loc: tuple[Any, ...], ctx: dict[str, Any]) -> Problem:
    place = _Place(root, data, loc)
    if not isinstance(place.value, dict):
        return place.path, "must be a mapping of fields"
    tags = _tags(_unwrap(place.type))
    kind = place.value.get("type")
    expected = ", ".join(tags) or ctx.get("types", "")
    return field_path([*place.parts, "type"]), f"unknown type {kind!r}: one of {expected}{suggestion(kind, tags)}"


def describe(errors: Sequence[Mapping[str, Any]], data: Any, root: type[BaseModel]) -> list[Problem]:
    """Every pydantic error of validating ``data`` against ``root`` as (path, message)."""
    problems: list[Problem] = []
    for err in errors:
        loc = tuple(err["loc"])
        ctx = err.get("ctx") or {}
        nested = getattr(ctx.get("error"), "problems", None)
        if nested is not None:  # a validator that reports several problems at their own paths
            problems.extend(nested)
        elif err["type"] == "extra_forbidden" and loc:
            problems.append(_unknown_field(root, data, loc))
        elif err["type"] == "union_tag_invalid" or "types" in ctx:
            problems.append(_unknown_tag(root, data, loc, ctx))
        else:
            place = _Place(root, data, loc)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "literal_error":
                message += suggestion(place.value, re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
            problems.append((place.path, message))
    return problems
