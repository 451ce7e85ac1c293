"""msgspec structs derived from the pydantic messages: one definition of a message, two decoders.

A message is defined once, as a pydantic model in ``messages.py`` (what publishers build, and what shows
people clear validation errors). A hot consumer that decodes it by the thousand derives a msgspec struct
from that definition with ``strict_struct``: the same field names, types and defaults (nested models
become nested structs), decoded strictly and several times faster, never tracked by the garbage collector.
A field added to the model is in the struct at once; nothing is kept in step by hand.
"""

from __future__ import annotations

import functools
import operator
import types
import typing
from typing import Any, Callable, cast

import msgspec
from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def strict_struct(model: type[BaseModel], *, required: tuple[str, ...] = (), forbid_unknown_fields: bool = False,
                  name: str | None = None) -> type[msgspec.Struct]:
    """``model`` as a frozen, keyword-only msgspec struct.

    ``required``: fields the model fills in by itself (a default factory: a new id, the time now) that a
    decoded message must carry. ``forbid_unknown_fields``: a key the model does not know is an error (the
    model itself ignores it). Nested models are derived with neither (cached: one struct per model).
    """
    return _derive(model, tuple(sorted(required)), forbid_unknown_fields, name or model.__name__ + "Struct")


@functools.cache
def _derive(model: type[BaseModel], required: tuple[str, ...], forbid: bool, name: str) -> type[msgspec.Struct]:
    unknown = set(required) - set(model.model_fields)
    if unknown:
        raise ValueError(f"{model.__name__} has no field {sorted(unknown)}")
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field_name, info in model.model_fields.items():
        tp = _struct_type(info.annotation)
        if field_name in required or (info.default is PydanticUndefined and info.default_factory is None):
            fields.append((field_name, tp))
        elif info.default_factory is not None:  # the messages' factories take no argument (new_id, utcnow, list)
            factory = cast(Callable[[], Any], info.default_factory)
            fields.append((field_name, tp, msgspec.field(default_factory=factory)))
        else:
            fields.append((field_name, tp, info.default))
    # gc=False: a decoded message holds no reference cycles; frozen: it is a fact, never changed
    return msgspec.defstruct(name, fields, kw_only=True, frozen=True, gc=False,
                             forbid_unknown_fields=forbid, module=model.__module__)


def _struct_type(tp: Any) -> Any:
    """``tp`` with every pydantic model in it replaced by its derived struct."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return strict_struct(tp)
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    args = tuple(_struct_type(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return functools.reduce(operator.or_, args)
    return origin[args]
