"""Requests the edge refuses before any provider serves them, as usage events.

A 400 (bad body), 401 / 403 (key), 404 (unknown model or provider), 413 (body too large) or 429 (a key's
or a provider's limit) is recorded like any other request: it shows in the request log, in the error
counts of the history and Grafana. Such an event has no provider, no tokens and no cost, so it is never
billed, and the live windows the router admits by skip it: it never counts against a limit.

A flood of them must not grow storage without bound. Each edge replica records at most ``PER_SECOND``
refusals of one (status, endpoint) per second as events of their own; the rest of that second's are
summed into ONE event whose ``requests`` says how many it stands for, published when the second is over.
So a flood costs at most ``PER_SECOND + 1`` events per status and endpoint per second and replica, and
``sum(requests)`` (what the rollups, the history and the dashboards count) still counts every request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

from llmgw_common.ids import new_id
from llmgw_common.messages import UsageEvent

from .core.errors import GatewayError, UpstreamError

PER_SECOND = 20  # refusals of one status and endpoint recorded one by one, per second and replica


@dataclass
class _Aggregate:
    first: UsageEvent
    requests: int = 1
    same_key: bool = True
    same_model: bool = True

    def add(self, key_id: str | None, model: str) -> None:
        self.requests += 1
        self.same_key = self.same_key and key_id == self.first.key_id
        self.same_model = self.same_model and model == self.first.model

    def event(self) -> UsageEvent:
        more = self.requests - 1
        error = f"{self.first.error} (and {more} more like it in this second)" if more else self.first.error
        return self.first.model_copy(update={
            "requests": self.requests, "error": error,
            "key_id": self.first.key_id if self.same_key else None,
            "model": self.first.model if self.same_model else "(several)"})


class RefusalRecorder:
    def __init__(self, publish: Callable[[UsageEvent], None], per_second: int = PER_SECOND,
                 clock: Callable[[], float] = time.monotonic):
        self._publish = publish  # never blocks (the usage publisher)
        self.per_second = per_second
        self._clock = clock
        self._second = -1
        self._seen: dict[tuple[int, str], int] = {}  # (status, endpoint) -> refusals in this second
        self._pending: dict[tuple[int, str], _Aggregate] = {}

    def record(self, err: GatewayError, endpoint: str, key_id: str | None = None, model: str | None = None) -> None:
        """One refused request. Its event's request id is the one the client gets in ``x-request-id``."""
        request_id = err.headers.get("x-request-id") or new_id()
        err.headers["x-request-id"] = request_id
        now = self._clock()
        second = int(now)
        if second != self._second:
            self.flush()
            self._second = second
        slot = (err.status, endpoint)
        seen = self._seen[slot] = self._seen.get(slot, 0) + 1
        model = (model or "")[:256]
        if seen <= self.per_second:
            self._publish(_event(err, endpoint, key_id, model, request_id))
            return
        aggregate = self._pending.get(slot)
        if aggregate is not None:
            aggregate.add(key_id, model)
            return
        self._pending[slot] = _Aggregate(_event(err, endpoint, key_id, model, request_id))
        # published when the second is over, even if no other request comes
        asyncio.get_running_loop().call_later(second + 1 - now, self._second_over, second)

    def flush(self) -> None:
        """Publish what is summed so far (the second is over, or the edge stops)."""
        pending, self._pending = self._pending, {}
        self._seen.clear()
        for aggregate in pending.values():
            self._publish(aggregate.event())

    def _second_over(self, second: int) -> None:
        left = second + 1 - self._clock()
        if left > 0:  # a timer may fire a moment early
            asyncio.get_running_loop().call_later(left, self._second_over, second)
        elif second == self._second:
            self.flush()


def _event(err: GatewayError, endpoint: str, key_id: str | None, model: str, request_id: str) -> UsageEvent:
    # a direct pass-through call that failed upstream is no refusal, but it had no event either
    reason = "direct pass-through failed" if isinstance(err, UpstreamError) else "refused before routing"
    return UsageEvent(request_id=request_id, endpoint=endpoint, key_id=key_id, model=model, status=err.status,
                      error=err.message, route_reason=reason)
