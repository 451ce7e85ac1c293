"""Logging set-up with secret redaction applied to every record, whoever logs it.

Two formats: the human one (default, what ``llmgw run`` prefixes and shows) and, with
``LLMGW_LOG_FORMAT=json``, one JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``service``,
``logger``, ``message``, and when known ``request_id`` (``REQUEST_ID``, set where a request is handled),
``trace_id`` / ``span_id`` (the current span while tracing is on) and ``exception``. Messages and
exceptions are redacted in both.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

from . import tracing

# the request being handled in this task (edge: the gateway's request id; router: the decision's)
REQUEST_ID: ContextVar[str | None] = ContextVar("llmgw_request_id", default=None)
LOG_FORMAT_ENV = "LLMGW_LOG_FORMAT"

# Bearer tokens, API-key headers and key-shaped strings (sk-..., gsk_..., AIza...)
_PATTERNS = [
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+"), r"\1\2[REDACTED]"),
    (re.compile(r"(?i)((?:x-api-key|api[-_]key|x-goog-api-key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"), r"\1[REDACTED]"),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"), "Bearer [REDACTED]"),
    (re.compile(r"\b(sk-[A-Za-z0-9_-]{8,}|gsk_[A-Za-z0-9]{8,}|AIza[0-9A-Za-z_-]{20,}|gh[pousr]_[A-Za-z0-9]{20,})"), "[REDACTED]"),
]


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, redacted."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        ids = tracing.current_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(service: str, fmt: str | None = None) -> logging.Formatter:
    """The formatter ``LLMGW_LOG_FORMAT`` asks for: ``json``, else the human one."""
    fmt = (os.environ.get(LOG_FORMAT_ENV, "") if fmt is None else fmt).strip().lower()
    if fmt == "json":
        return JsonFormatter(service)
    return RedactingFormatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request line at INFO; keep it for debugging only
    logging.getLogger("httpx").setLevel(logging.WARNING)
