"""Sortable unique ids for events and requests (ULID: 26 chars, time-ordered)."""

from ulid import ULID


def new_id() -> str:
    return str(ULID())
