"""Key-shaped values for tests of masking and redaction, made at run time: the repository holds
no string that looks like a real API key."""

from __future__ import annotations

import secrets


def fake_key(prefix: str = "sk-") -> str:
    """A throwaway value in a provider key's shape (``sk-...``, ``gsk_...``), different every run."""
    return prefix + "test" + secrets.token_hex(12)
