"""Gateway API keys: the credentials clients present to the edge, and where they are kept.

A key's secret (``llmgw-<id>-<43 random characters>``, 256 bits of entropy) is
shown once, when it is created or rotated; only its SHA-256 is stored. Records
live in a JetStream key-value bucket (``LLMGW_KEYS``): replicated with the
NATS cluster and watchable, so every edge replica keeps a local copy from a
watch (a check costs no network round trip) and sees a revocation within
moments. The admin API and ``llmgw keys`` write it through ``KeyStore``.

A key may carry limits and budgets (requests / tokens / cost per minute, hour,
day and calendar month, UTC), the models and providers it may use (globs), and
an expiry. The router enforces the limits in the same atomic admission as the
providers' (scope ``k:<id>``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import logging
import re
import secrets
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, AsyncIterator, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config import Limits

log = logging.getLogger(__name__)

KEYS_BUCKET = "LLMGW_KEYS"
SECRET_PREFIX = "llmgw-"
_ID = re.compile(r"^[a-z0-9]{12}$")
_SECRET = re.compile(r"^llmgw-([a-z0-9]{12})-[A-Za-z0-9_-]{43}$")


def new_key_id() -> str:
    return secrets.token_hex(6)


def new_secret(key_id: str) -> str:
    return f"{SECRET_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    """The key id a secret names, or None when it is not shaped like one of ours."""
    m = _SECRET.match(secret)
    return m.group(1) if m else None


def display_prefix(secret: str) -> str:
    """What may be shown of a secret: enough to tell keys apart, never enough to use one."""
    return secret[:len(SECRET_PREFIX) + 16] + "…"


class KeyLimits(Limits):
    """A key's limits: the provider windows plus calendar months (UTC), e.g. a monthly budget."""

    requests_per_month: int | None = Field(default=None, ge=0)
    tokens_per_month: int | None = Field(default=None, ge=0)
    cost_per_month: Decimal | None = Field(default=None, ge=0)


class KeyRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")  # records written by a newer version still load

    id: str
    name: str = Field(min_length=1, max_length=64)
    hash: str  # sha256 hex of the secret
    prefix: str  # display_prefix of the secret
    created_at: datetime
    rotated_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    models: list[str] = Field(default_factory=list, max_length=64, description="globs; empty: every model")
    providers: list[str] = Field(default_factory=list, max_length=64, description="empty: every provider")
    limits: KeyLimits = Field(default_factory=KeyLimits)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("a key id is 12 lowercase hex characters")
        return v

    def usable(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(timezone.utc)
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(secret_hash(secret), self.hash)  # timing-safe

    def allows_model(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def allows_provider(self, provider: str) -> bool:
        return not self.providers or provider in self.providers

    def public(self) -> dict[str, Any]:
        """What the admin API and the CLI show: everything but the hash."""
        return self.model_dump(mode="json", exclude={"hash"})


_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(minute|hour|day|month)\s*$")


def parse_budget(text: str) -> dict[str, Decimal]:
    """``50/month`` -> {"cost_per_month": 50} (USD)."""
    m = _BUDGET.match(text)
    if not m:
        raise ValueError(f"a budget looks like 50/month (USD per minute, hour, day or month), not {text!r}")
    return {f"cost_per_{m.group(2)}": Decimal(m.group(1))}


class KeyStore:
    """Key records in the JetStream key-value bucket; one entry per key id."""

    def __init__(self, kv):
        self._kv = kv

    @classmethod
    async def open(cls, js) -> KeyStore:
        from nats.js.api import KeyValueConfig

        from .jetstream import ensure_bucket

        kv = await ensure_bucket(js, KeyValueConfig(bucket=KEYS_BUCKET, history=5,
                                                    description="llmgw gateway API keys (hashes)"))
        return cls(kv)

    async def create(self, name: str, *, models: list[str] | None = None, providers: list[str] | None = None,
                     limits: KeyLimits | None = None, expires_at: datetime | None = None) -> tuple[KeyRecord, str]:
        key_id = new_key_id()
        secret = new_secret(key_id)
        record = KeyRecord(id=key_id, name=name, hash=secret_hash(secret), prefix=display_prefix(secret),
                           created_at=datetime.now(timezone.utc), expires_at=expires_at, models=models or [],
                           providers=providers or [], limits=limits or KeyLimits())
        await self._kv.create(key_id, record.model_dump_json().encode())
        return record, secret

    async def get(self, key_id: str) -> KeyRecord | None:
        from nats.js.errors import KeyNotFoundError

        if not _ID.match(key_id):
            return None
        try:
            entry = await self._kv.get(key_id)
        except KeyNotFoundError:
            return None
        return KeyRecord.model_validate_json(entry.value) if entry.value else None

    async def list(self) -> list[KeyRecord]:
        from nats.js.errors import NoKeysError

        try:
            ids = await self._kv.keys()
        except NoKeysError:
            return []
        records = [await self.get(i) for i in ids]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> KeyRecord | None:
        record = await self.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record.revoked_at = datetime.now(timezone.utc)
            await self._kv.put(key_id, record.model_dump_json().encode())
        return record

    async def rotate(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """A new secret for the same key (same id, limits and usage history); the old one stops working."""
        record = await self.get(key_id)
        if record is None or record.revoked_at is not None:
            return None
        secret = new_secret(key_id)
        record.hash, record.prefix = secret_hash(secret), display_prefix(secret)
        record.rotated_at = datetime.now(timezone.utc)
        await self._kv.put(key_id, record.model_dump_json().encode())
        return record, secret

    async def update(self, record: KeyRecord) -> None:
        await self._kv.put(record.id, record.model_dump_json().encode())

    async def watch(self) -> AsyncIterator[tuple[str, KeyRecord | None] | None]:
        """Every key's current record, then ``None`` (the initial state is complete), then each change
        as it happens (a deleted key: its id and None)."""
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    yield None
                    continue
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    yield entry.key, None
                    continue
                try:
                    yield entry.key, KeyRecord.model_validate_json(entry.value)
                except ValueError:
                    yield entry.key, None  # unreadable: treated as no key (fail closed)
        finally:
            await watcher.stop()


class KeyMirror:
    """A process's copy of every key record, kept current by a watch on the bucket (restarted whenever it
    ends: NATS away, the bucket recreated). Look-ups are dict reads; ``ready`` is set once the first full
    copy is in. The edge checks callers against it, the router applies keys' limits and providers."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._on_change = on_change  # after each change once the first copy is in (the router announces it)

    async def start(self, js, timeout_s: float = 10.0) -> None:
        """Follow the bucket and wait for the first full copy. Called again after a timeout (a service's
        start-up retried), it waits for the watch already running instead of starting a second one."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow(js), name="key-mirror")
        try:
            await asyncio.wait_for(self.ready.wait(), timeout_s)
        except TimeoutError:
            raise RuntimeError("the key store (JetStream key-value bucket) did not answer: is NATS with "
                               "JetStream up?") from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _follow(self, js) -> None:
        delay = 0.5
        while True:
            try:
                store = await KeyStore.open(js)
                fresh: dict[str, KeyRecord] = {}
                initial = True
                async for item in store.watch():
                    if item is None:  # the initial state is complete: switch over at once
                        if initial:
                            self.records, initial = fresh, False
                            self.ready.set()
                        continue
                    key_id, record = item
                    target = fresh if initial else self.records
                    if record is None:
                        target.pop(key_id, None)
                    else:
                        target[key_id] = record
                    if not initial and self._on_change is not None:
                        self._on_change()
                    delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: keep the last copy (fail closed stays closed), retry
                log.warning("key watch interrupted (%s); retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
