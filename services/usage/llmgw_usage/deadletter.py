"""Dead letters: the usage stream's messages the consumer refused, kept for a human to look at.

A message that is no event (``domain.refusal``: not JSON, out of range, too
large, ...) can never be stored; retried, it would come back forever. The
consumer publishes it to the JetStream stream ``LLMGW_USAGE_DLQ`` on
``llmgw.usage.dead.<reason>`` and only then terminates the original. A dead
letter holds:

- the body: the original bytes, whole up to ``KEEP_BYTES`` (every message
  short of ``too_large``), else their first ``EXCERPT_BYTES``;
- headers: ``Llmgw-Reason`` (the code, also the subject's last token),
  ``Llmgw-Detail`` (in words), ``Llmgw-Subject`` and ``Llmgw-Stream-Seq`` (the
  original's subject and sequence in ``LLMGW_USAGE``), ``Llmgw-Size`` (the
  original's size) and ``Nats-Msg-Id`` (``<stream seq>:<sha256>``, so a
  message refused twice, after a lost term, is stored once).

Retention: limits, 30 days and 256 MB, the oldest dropped first; nothing reads
it back into the projections (``llmgw replay`` reads ``LLMGW_USAGE`` and
refuses the same messages by the same rules). ``GET /api/usage/dead-letters``
lists them newest first (``llmgw.usage.query.dead``).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from llmgw_common import jetstream, subjects
from llmgw_common.messages import DeadLetter, UsageDeadLetters, UsageDeadLettersQuery

from .domain import MAX_EVENT_BYTES, Refusal

log = logging.getLogger(__name__)

MAX_AGE_S = 30 * 86400
MAX_BYTES = 256 * 1024**2
KEEP_BYTES = MAX_EVENT_BYTES  # a refused message up to this size is kept whole
EXCERPT_BYTES = 16 * 1024  # of a larger one, its first bytes
DETAIL_CHARS = 500
LIST_EXCERPT_BYTES = 1024  # of each dead letter in a listing
SCAN_LIMIT = 10_000  # sequences one listing page looks at, at most (a reason filter skips others)
PUBLISH_TIMEOUT_S = 5.0

H_REASON, H_DETAIL, H_SUBJECT, H_SEQ, H_SIZE = (
    "Llmgw-Reason", "Llmgw-Detail", "Llmgw-Subject", "Llmgw-Stream-Seq", "Llmgw-Size")


def stream_config() -> StreamConfig:
    return StreamConfig(
        name=subjects.USAGE_DLQ_STREAM,
        description="usage messages the usage service refused (see llmgw_usage/deadletter.py)",
        subjects=[subjects.USAGE_DEAD_WILDCARD],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=MAX_AGE_S,
        max_bytes=MAX_BYTES,
        max_msg_size=KEEP_BYTES + 64 * 1024,
        duplicate_window=120.0,
    )


async def ensure_stream(js) -> None:
    """Create the dead-letter stream when missing (an existing one is left as it is: see ``jetstream``)."""
    await jetstream.ensure_stream(js, stream_config())


def _header_text(text: str, limit: int = DETAIL_CHARS) -> str:
    """Printable ASCII only (a header value must not hold a line break), at most ``limit`` characters."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text[:limit])


def stream_seq(msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - a message without JetStream metadata (tests, a plain NATS message)
        return None


def dead_letter(msg, refusal: Refusal) -> tuple[str, bytes, dict[str, str]]:
    """(subject, body, headers) of the dead letter of ``msg``."""
    data = bytes(msg.data or b"")
    seq = stream_seq(msg)
    body = data if len(data) <= KEEP_BYTES else data[:EXCERPT_BYTES]
    headers = {
        "Nats-Msg-Id": f"{seq if seq is not None else '-'}:{hashlib.sha256(data).hexdigest()[:32]}",
        H_REASON: refusal.code,
        H_DETAIL: _header_text(refusal.detail) or "-",
        H_SUBJECT: _header_text(str(getattr(msg, "subject", "") or ""), 256) or "-",
        H_SEQ: "" if seq is None else str(seq),
        H_SIZE: str(len(data)),
    }
    return subjects.usage_dead_subject(refusal.code), body, headers


class DeadLetters:
    """Where the consumer puts what it refuses (``js``: a JetStream context)."""

    def __init__(self, js):
        self._js = js
        self.stored = 0

    async def put(self, msg, refusal: Refusal) -> None:
        """Store the dead letter of ``msg``; raises when JetStream did not acknowledge it."""
        subject, body, headers = dead_letter(msg, refusal)
        await self._js.publish(subject, body, headers=headers, timeout=PUBLISH_TIMEOUT_S)
        self.stored += 1


def _reason_of(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


def _row(raw) -> DeadLetter:
    headers = raw.headers or {}
    data = raw.data or b""
    seq_text = headers.get(H_SEQ, "")
    size_text = headers.get(H_SIZE, "")
    at = raw.time if getattr(raw, "time", None) else datetime.now(timezone.utc)
    return DeadLetter(
        seq=raw.seq, at=at, reason=headers.get(H_REASON) or _reason_of(raw.subject or ""),
        detail=headers.get(H_DETAIL, ""), subject=headers.get(H_SUBJECT, ""),
        stream_seq=int(seq_text) if seq_text.isdigit() else None,
        size=int(size_text) if size_text.isdigit() else len(data), kept=len(data),
        excerpt=data[:LIST_EXCERPT_BYTES].decode("utf-8", errors="replace"),
    )


async def list_dead(js, q: UsageDeadLettersQuery) -> UsageDeadLetters:
    """The counts, and a page of dead letters newest first (``next_cursor``: the sequence to go on from).
    The page is not cut by size here: the caller fits it to one reply."""
    try:
        info = await js.stream_info(subjects.USAGE_DLQ_STREAM, subjects_filter=subjects.USAGE_DEAD_WILDCARD)
    except NotFoundError:
        return UsageDeadLetters()
    state = info.state
    by_reason = {_reason_of(subject): n for subject, n in sorted((state.subjects or {}).items())}
    reply = UsageDeadLetters(total=state.messages, by_reason=by_reason)
    if q.count_only or not state.messages:
        return reply
    seq = min(q.cursor or state.last_seq, state.last_seq)
    low = max(state.first_seq, 1)
    scanned = 0
    while seq >= low and len(reply.rows) < q.limit and scanned < SCAN_LIMIT:
        scanned += 1
        try:
            raw = await js.get_msg(subjects.USAGE_DLQ_STREAM, seq=seq)
        except NotFoundError:  # deleted (aged out meanwhile)
            seq -= 1
            continue
        seq -= 1
        if q.reason is not None and _reason_of(raw.subject or "") != q.reason:
            continue
        reply.rows.append(_row(raw))
    reply.next_cursor = seq if seq >= low else None
    return reply
