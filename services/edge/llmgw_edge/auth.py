"""Who is calling: gateway API keys checked at the edge, against a local copy of the key store.

The copy is filled from a watch on the JetStream key-value bucket
(``llmgw_common.keys``), so a check is a dict look-up and a hash, and a key
created, rotated or revoked anywhere is seen here within moments. Keys are
required as soon as one exists (a revoked one counts: revoking the last key
must not open the gateway) or when ``edge.require_keys`` says so; a gateway
with no keys at all answers everyone, which is the local single-user set-up
(``llmgw run`` binds to loopback, and the edge refuses to listen elsewhere
without keys).

Accepted wherever each client puts its key: ``Authorization: Bearer``,
``x-api-key`` (Anthropic clients), ``api-key`` (Azure-style),
``x-goog-api-key`` (Gemini clients). Failed checks are limited per client
address across every edge replica (counted in Redis: ``llmgw_common.brute_force``),
so guessing is slow; only a failed check costs a Redis round trip.
"""

from __future__ import annotations

from typing import Mapping

from llmgw_common.brute_force import KEY_REALM, SharedFailureLimiter
from llmgw_common.keys import KeyMirror, KeyRecord, key_id_of

from .core.errors import GatewayError

KEY_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")


def presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value:
            return value.strip()
    return None


class KeyCache(KeyMirror):
    """The edge's copy of the key store (a ``KeyMirror``) and the checks made against it."""

    def __init__(self, require_keys: bool = False, redis=None):
        super().__init__()
        self.require_keys = require_keys
        self.limiter = SharedFailureLimiter(KEY_REALM, redis)  # redis None: counted in this process

    @property
    def enforcing(self) -> bool:
        return self.require_keys or bool(self.records)

    async def authenticate(self, headers: Mapping[str, str], address: str) -> KeyRecord | None:
        """The caller's key (None when keys are not enforced); raises 401 / 429 otherwise. A key that passes
        costs no I/O; a failure is counted in Redis (shared by every edge replica)."""
        if not self.enforcing:
            return None
        wait = self.limiter.blocked_for(address)
        if wait > 0:
            raise _blocked(wait)
        secret = presented_key(headers)
        if secret is None:
            await self._failed(address)
            raise GatewayError(401, "Missing API key: send your gateway key as `Authorization: Bearer <key>` "
                                    "(or x-api-key).", code="missing_api_key")
        record = self.records.get(key_id_of(secret) or "")
        if record is None or not record.matches(secret) or not record.usable():
            await self._failed(address)
            # one message for every failure: an unknown, wrong, revoked or expired key look alike
            raise GatewayError(401, "Invalid API key.", code="invalid_api_key")
        return record

    async def _failed(self, address: str) -> None:
        wait = await self.limiter.failed(address)
        if wait > 0:  # past the limit (reached through other replicas): refused as blocked
            raise _blocked(wait)


def _blocked(wait: float) -> GatewayError:
    return GatewayError(429, "Too many failed API key checks from this address; wait before trying again.",
                        code="too_many_failed_auth", headers={"retry-after": str(max(1, int(wait + 0.999)))})


def check_model(record: KeyRecord | None, model: str) -> None:
    if record is not None and not record.allows_model(model):
        raise GatewayError(403, f"This API key may not use model `{model}`.", code="model_not_allowed",
                           param="model")


def check_metered(record: KeyRecord | None, provider_id: str, method: str, model: str | None) -> None:
    """A key with limits (a budget, a cost, token or request limit) may not call what admission cannot meter:
    a pass-through request, other than a read, that names no model of the config (no price, no window) would
    spend past them unseen."""
    if record is None or method in ("GET", "HEAD") or not any(v is not None for _name, v in record.limits):
        return
    what = f"`{model}` is not a model of provider `{provider_id}` in the config" if model else \
        "this request names no model of the config"
    raise GatewayError(403, f"This API key has limits, which the gateway keeps only on the models it knows: {what}. "
                            "Add the model to the provider's models (with its price) or use a key without limits.",
                       code="unmetered_request", param="model" if model else None)
