"""The hot path's messages are msgspec structs with the wire JSON of the pydantic models they replaced.

Each ``OLD_JSON`` line is what the pydantic version of the message (before llmgw used msgspec for it) wrote,
byte for byte: a router or edge of that version must still be understood, and must understand what this
one writes. Bad messages are refused with a ValueError naming the field, which the service runtime answers 400.
"""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import pytest

from llmgw_common.config import Price
from llmgw_common.messages import (AdmissionGiveUp, AdmissionGiveUps, AttemptOutcome, AttemptOutcomes, Candidate,
                                   LeaseRenewal, Reservation, RouteDecision, RouteRequest, UsageEvent)
from llmgw_common.service import bad_request

OLD_JSON = {
    RouteRequest: [
        b'{"schema_version":1,"request_id":"r1","model":"m","stream":true,"estimated_prompt_tokens":12,'
        b'"max_tokens":16,"key_id":"k1","headers":{"x-team":"a"},"prompt_class":"code","exclude":["free"],'
        b'"event_id":"e1","endpoint":"chat"}',
    ],
    RouteDecision: [
        b'{"schema_version":1,"request_id":"r1","model":"m","candidates":[{"provider":"paid","model":"m",'
        b'"upstream_model":"gpt-4o-mini","price":{"input_per_mtok":"0.15","output_per_mtok":"0.6",'
        b'"cached_input_per_mtok":"0.075","cache_write_per_mtok":null,"per_request":"0","reasoning_per_mtok":null,'
        b'"monthly_fee_usd":"0"},"free":false,"reason":"priority 1","reservation":{"provider":"paid","model":"m",'
        b'"at_s":1765000000,"tokens_in":12,"tokens_out":16,"cost_nano":3400,"key_id":"k1","lease":null},'
        b'"probe":true},{"provider":"free","model":"m","upstream_model":"x","price":null,"free":true,"reason":"",'
        b'"reservation":null,"probe":false}],"skipped":[{"provider":"p3","reason":"cooling down"}],'
        b'"strategy":"round-robin","rule":"r","error":null,"reusable_s":30.0,"groups":[0,0]}',
        b'{"schema_version":1,"request_id":"r2","model":"m","candidates":[],"skipped":[],"strategy":"priority",'
        b'"rule":null,"error":{"status":429,"code":"rate_limit_exceeded","message":"full","retry_after_s":12.0},'
        b'"reusable_s":0.0,"groups":[]}',
    ],
    AttemptOutcome: [
        b'{"schema_version":1,"request_id":"r1","provider":"paid","model":"m","ok":false,"status":429,'
        b'"latency_ms":12.5,"retry_after_s":3.0,"reservation":{"provider":"paid","model":"m","at_s":1765000000,'
        b'"tokens_in":12,"tokens_out":16,"cost_nano":3400,"key_id":"k1","lease":null},"kind":"rate_limited"}',
    ],
    AttemptOutcomes: [
        b'{"schema_version":1,"outcomes":[{"schema_version":1,"request_id":"r1","provider":"paid","model":"m",'
        b'"ok":true,"status":200,"latency_ms":4.0,"retry_after_s":null,"reservation":null,"kind":null}]}',
    ],
    AdmissionGiveUps: [b'{"schema_version":1,"items":[{"request_id":"r1","attempt":1}],"released":1}'],
    LeaseRenewal: [b'{"schema_version":1,"members":["r1:paid"],"extend_s":120.0}'],
}
CASES = [(cls, data) for cls, lines in OLD_JSON.items() for data in lines]


# fields added since the pydantic-era JSON above, with their defaults: an older reader ignores them
ADDED_SINCE = {"needs": [], "fallback": None, "exclude_from": 0, "prefix_key": None, "prefix_tokens": 0}


def _without_added(value):
    if isinstance(value, dict):
        extra = {k: v for k, v in value.items() if k in ADDED_SINCE}
        assert extra == {k: ADDED_SINCE[k] for k in extra}, extra  # at their defaults, nothing else
        return {k: _without_added(v) for k, v in value.items() if k not in ADDED_SINCE}
    if isinstance(value, list):
        return [_without_added(v) for v in value]
    return value


@pytest.mark.parametrize(("cls", "data"), CASES, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CASES)])
def test_old_json_decodes_and_encodes_back_byte_for_byte(cls, data):
    message = cls.decode(data)
    assert isinstance(message, cls) and message.schema_version == 1
    encoded = message.encode()
    # the old fields come first, in their order, with the same values; added fields follow at their defaults
    assert _without_added(json.loads(encoded)) == json.loads(data)
    assert list(_without_added(json.loads(encoded))) == list(json.loads(data))
    assert encoded.startswith(data[:-1]) or cls is AttemptOutcomes  # (its outcomes hold the added field)


def test_decoded_fields_are_the_typed_values_both_ends_use():
    decision = RouteDecision.decode(OLD_JSON[RouteDecision][0])
    paid, free = decision.candidates
    assert isinstance(paid, Candidate) and paid.probe and free.free and free.price is None
    # the config's Price and the usage event's Reservation stay pydantic models: one definition each
    assert isinstance(paid.price, Price) and paid.price.cached_input_per_mtok == Decimal("0.075")
    assert paid.price.cost(1_000_000, 0) == Decimal("0.15")
    assert paid.reservation == Reservation(provider="paid", model="m", at_s=1765000000, tokens_in=12, tokens_out=16,
                                           cost_nano=3400, key_id="k1")
    # what the edge does with the admitted candidate: its reservation goes into the usage event
    event = UsageEvent(request_id="r1", model="m", status=200, reservation=paid.reservation)
    assert json.loads(event.encode())["reservation"]["cost_nano"] == 3400
    assert decision.skipped[0].reason == "cooling down" and decision.groups == [0, 0]
    # a price is validated once and shared by the decisions that carry it (it is never changed)
    assert RouteDecision.decode(OLD_JSON[RouteDecision][0]).candidates[0].price is paid.price


def test_a_newer_senders_fields_are_ignored_and_an_older_senders_defaults_filled():
    newer = RouteRequest.decode(b'{"schema_version":2,"request_id":"r","model":"m","lease_hint":{"n":5}}')
    assert (newer.schema_version, newer.model, newer.exclude, newer.endpoint) == (2, "m", [], "chat")
    # a float field written as an integer by another encoder is still a float
    assert AttemptOutcome.decode(b'{"request_id":"r","provider":"p","model":"m","ok":true,"status":200,'
                                 b'"latency_ms":4}').latency_ms == 4.0


@pytest.mark.parametrize(("cls", "data", "where"), [
    (RouteRequest, b'{not json', None),
    (RouteRequest, b'{"request_id":"r"}', "model"),
    (RouteRequest, b'{"request_id":5,"model":"m"}', "request_id"),
    (RouteRequest, b'{"request_id":"r","model":"m","headers":{"a":1}}', "headers"),
    (RouteRequest, b'[]', None),
    (RouteDecision, b'{"request_id":"r","model":"m","candidates":[{"provider":"p","model":"m",'
                    b'"upstream_model":"u","price":{"input_per_mtok":"-1"}}]}', "price"),
    (RouteDecision, b'{"request_id":"r","model":"m","candidates":[{"provider":"p","model":"m",'
                    b'"upstream_model":"u","price":{"input_per_mtok":[1]}}]}', "input_per_mtok"),
    (AttemptOutcome, b'{"request_id":"r","provider":"p","model":"m","ok":"yes","status":200,"latency_ms":1}', "ok"),
    (AdmissionGiveUps, b'{"items":[' + b",".join([b'{"request_id":"r"}'] * 1001) + b']}', "items"),
    (LeaseRenewal, b'{"members":' + json.dumps(["m"] * 10_001).encode() + b'}', "members"),
])
def test_bad_messages_are_refused_with_where(cls, data, where):
    with pytest.raises(ValueError) as refused:
        cls.decode(data)
    assert isinstance(refused.value, msgspec.DecodeError)
    said = bad_request(refused.value)
    assert said.startswith("invalid request: ")
    if where is not None:
        assert where in said


def test_messages_built_in_code_encode_as_the_old_ones_did():
    give_ups = AdmissionGiveUps(items=[AdmissionGiveUp(request_id="r1", attempt=1)], released=1)
    assert give_ups.encode() == OLD_JSON[AdmissionGiveUps][0]
    outcome = AttemptOutcome(request_id="r1", provider="paid", model="m", ok=True, status=200, latency_ms=4.0)
    assert _without_added(json.loads(AttemptOutcomes(outcomes=[outcome]).encode())) == \
        json.loads(OLD_JSON[AttemptOutcomes][0])
