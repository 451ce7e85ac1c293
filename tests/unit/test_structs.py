"""One definition per message: the usage ingest's msgspec struct is derived from ``UsageEvent``."""

from __future__ import annotations

import msgspec
import pytest
from pydantic import BaseModel, Field

from llmgw_common.ids import new_id
from llmgw_common.messages import UsageEvent
from llmgw_common.structs import strict_struct
from llmgw_usage import domain


class Part(BaseModel):
    name: str
    size: int = 0


class Whole(BaseModel):
    id: str = Field(default_factory=new_id)
    parts: list[Part] = Field(default_factory=list)
    main: Part | None = None
    label: str


def test_a_derived_struct_has_the_models_fields_types_and_defaults():
    whole = strict_struct(Whole, required=("id",), forbid_unknown_fields=True)
    assert whole.__struct_fields__ == tuple(Whole.model_fields)
    ok = msgspec.json.decode(b'{"id": "w1", "label": "x", "parts": [{"name": "a", "extra": 1}]}', type=whole)
    assert ok.parts == [strict_struct(Part)(name="a", size=0)] and ok.main is None
    for bad in (b'{"label": "x"}',  # id: required here, though the model makes one up
                b'{"id": "w1", "label": "x", "colour": "red"}',  # a key the model does not know
                b'{"id": "w1", "label": "x", "parts": [{"name": "a", "size": "3"}]}'):  # strict: no coercion
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=whole)
    with pytest.raises(ValueError, match="no field"):
        strict_struct(Whole, required=("nope",))


def test_the_ingest_event_is_derived_from_usage_event():
    assert domain.IngestEvent.__struct_fields__ == tuple(UsageEvent.model_fields)
    with pytest.raises(msgspec.ValidationError):  # a key only the store writes never rides along
        domain.decode_ingest(b'{"id": "e", "ts": "2025-01-01T00:00:00Z", "request_id": "r", "model": "m", '
                             b'"status": 200, "insert_token": "x"}')
    ev = UsageEvent(request_id="r", model="m", status=200, attempts=[], cost_usd="0.25")
    strict = domain.decode_ingest(ev.encode())
    assert {f: getattr(strict, f) for f in ("id", "ts", "request_id", "cost_usd")} == \
        {f: getattr(ev, f) for f in ("id", "ts", "request_id", "cost_usd")}
