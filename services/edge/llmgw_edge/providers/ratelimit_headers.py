"""When may we try a rate-limited provider again? Read from its response headers (pure).

Understood: ``Retry-After`` (seconds or an HTTP date), OpenAI / Groq
``x-ratelimit-reset-requests`` / ``-tokens`` (durations like ``1s``,
``6m0s``, ``20ms``, ``1h2m3.5s``), Anthropic ``anthropic-ratelimit-*-reset``
(RFC 3339 times) and plain ``x-ratelimit-reset`` (epoch seconds or seconds).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: str) -> float | None:
    parts = _DURATION.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip().replace(" ", ""):
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _until(value: str, now: datetime) -> float | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


def retry_after_seconds(headers: dict[str, str], now: datetime | None = None) -> float | None:
    now = now or datetime.now(timezone.utc)
    h = {k.lower(): v for k, v in headers.items()}
    waits: list[float] = []
    ra = h.get("retry-after")
    if ra:
        try:
            waits.append(max(0.0, float(ra)))
        except ValueError:
            until = _until(ra, now)
            if until is not None:
                waits.append(until)
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if h.get(name):
            d = _duration(h[name])
            if d is None:
                try:
                    d = float(h[name])
                except ValueError:
                    d = None
            if d is not None:
                waits.append(d)
    for name in ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset",
                 "anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-output-tokens-reset"):
        if h.get(name):
            until = _until(h[name], now)
            if until is not None:
                waits.append(until)
    if h.get("x-ratelimit-reset"):
        try:
            v = float(h["x-ratelimit-reset"])
            waits.append(max(0.0, v - now.timestamp()) if v > 1e9 else v)
        except ValueError:
            pass
    # Retry-After is authoritative when given; otherwise the longest reset we were told about
    if ra and waits:
        return waits[0]
    return max(waits) if waits else None
