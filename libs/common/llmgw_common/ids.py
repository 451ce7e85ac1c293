"""Sortable unique ids for events and requests (ULID: 26 chars, time-ordered)."""

from ulid import ULID

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: v for v, c in enumerate(_CROCKFORD)}


def new_id() -> str:
    return str(ULID())


def id_time_ms(value: str) -> int | None:
    """When an id of ``new_id`` was made (its first 10 characters, epoch ms); None for any other string."""
    if len(value) != 26 or value[0] > "7" or any(c not in _VALUE for c in value):
        return None
    ms = 0
    for c in value[:10]:
        ms = ms * 32 + _VALUE[c]
    return ms
