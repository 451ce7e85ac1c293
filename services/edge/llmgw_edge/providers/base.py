"""What every provider type shares: the base of the core's ``Provider`` interface (``core/provider.py``).

A provider is built once per configured provider (``ProviderConfig``) with
its resolved secret and the shared transport (one module per type beside
this one). Every provider answers translated calls (``chat`` /
``chat_stream`` / ``embed``, or raises ``unsupported``); a provider that
speaks some client formats natively lists them in ``passthrough`` and relays
those requests as they are: the fast path, which keeps every field the
gateway does not know about.

Errors are ``UpstreamError`` with a ``FailureKind`` (``classify``), mapped
here once per provider type; each provider module reads its own error bodies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, ClassVar, Mapping

from llmgw_common.config import ProviderConfig
from llmgw_common.failures import FailureKind
from llmgw_common.logs import redact

from ..core.errors import UpstreamError, unsupported
from ..core.provider import RawCall, RawReply
from ..core.types import ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, StreamEvent, Usage
from .ratelimit_headers import retry_after_seconds
from .http import HttpReply, Timeouts, Transport

# upstream response headers worth keeping on an error: rate-limit facts the router and clients use
_KEEP_ERROR_HEADERS = ("retry-after",)
_KEEP_ERROR_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


@dataclass
class ProviderContext:
    transport: Transport
    secret: str | None
    state_dir: Path


def token_count(value: Any) -> int:
    """A token figure from a provider's JSON: a positive int, else 0 (absent, null, negative, a bool...)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()
            if k.lower() in _KEEP_ERROR_HEADERS or k.lower().startswith(_KEEP_ERROR_PREFIXES)}


def error_message(status: int, body: bytes) -> str:
    """The provider's own message (``{"error": {"message": ...}}`` or ``{"error": "..."}``), redacted
    (some echo part of the key), bounded."""
    try:
        obj = json.loads(body)
        return error_message_of(status, obj.get("error") if isinstance(obj, dict) else None)
    except (ValueError, UnicodeDecodeError):
        return f"upstream {status}"


def error_message_of(status: int, err: Any) -> str:
    """``error_message`` of a body's error member, already read."""
    if isinstance(err, dict) and err.get("message"):
        return f"upstream {status}: {redact(str(err['message'])[:500])}"
    if isinstance(err, str):
        return f"upstream {status}: {redact(err[:500])}"
    return f"upstream {status}"


class BaseProvider:
    type: ClassVar[str]
    genai_system: ClassVar[str]  # OpenTelemetry's gen_ai.system (GenAI semantic conventions)
    error_format: ClassVar[str] = "openai"  # the wire format of its error bodies
    passthrough: ClassVar[frozenset[str]] = frozenset()  # inbound formats ``relay`` takes as they are

    def __init__(self, config: ProviderConfig, ctx: ProviderContext):
        self.config = config
        self.ctx = ctx

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def timeouts(self) -> Timeouts:
        c = self.config
        return Timeouts(connect=c.connect_timeout_s, read=c.timeout_s, first_byte=c.first_byte_timeout_s)

    def can_relay(self, fmt: str) -> bool:
        return fmt in self.passthrough

    async def chat(self, req: ChatRequest, model: str) -> ChatResponse:
        raise unsupported(f"provider {self.id} ({self.type}) does not serve chat requests")

    def chat_stream(self, req: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream events; raises ``UpstreamError`` before the first event if the provider refuses."""
        raise unsupported(f"provider {self.id} ({self.type}) does not stream")

    async def embed(self, req: EmbeddingRequest, model: str) -> EmbeddingResponse:
        raise unsupported(f"provider {self.id} ({self.type}) does not serve embeddings")

    async def relay(self, call: RawCall, model: str | None) -> RawReply:
        raise unsupported(f"provider {self.id} ({self.type}) cannot take {call.format} requests as they are")

    async def close(self) -> None:
        pass

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        """An error answer as one ``UpstreamError`` (provider modules refine the kind from their bodies)."""
        kept = kept_headers(headers)
        return UpstreamError(status, self.error_message(status, body), upstream_body=body,
                             upstream_format=self.error_format, headers=kept,
                             retry_after_s=retry_after_seconds(kept) if status == 429 else None)

    def error_message(self, status: int, body: bytes) -> str:
        return error_message(status, body)


class HttpProvider(BaseProvider):
    """A provider reached over HTTP at ``base_url`` (its type's default when the config has none)."""

    default_base_url: ClassVar[str | None] = None

    @property
    def base_url(self) -> str:
        url = self.config.base_url or self.default_base_url
        if not url:
            raise UpstreamError(500, f"provider {self.id} has no base_url", kind=FailureKind.UNSUPPORTED)
        return url

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.ctx.secret}"} if self.ctx.secret else {}

    async def headers(self, stream: bool) -> dict[str, str]:
        """Request headers: content type, the provider's credentials, then the config's extra headers."""
        h = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
        h.update(await self.credentials())
        h.update(self.config.headers)
        return h

    async def credentials(self) -> dict[str, str]:
        return self.auth_headers()

    async def post_json(self, path: str, body: Any) -> dict[str, Any]:
        """A translated request and its whole answer (a JSON object)."""
        return loads_object(await (await self.send(path, dumps(body), stream=False)).read())

    async def post_events(self, path: str, body: Any,
                          events: Callable[[HttpReply], AsyncIterator[StreamEvent]]) -> AsyncIterator[StreamEvent]:
        """A translated streaming request, its answer read by the provider's ``events``; the connection is
        released however the stream ends."""
        reply = await self.send(path, dumps(body), stream=True)
        try:
            async for event in events(reply):
                yield event
        finally:
            reply.close()

    def raw_usage(self, payload: bytes) -> Usage:
        """The usage in one JSON answer (or stream event) of this provider's own format, for raw relays."""
        return Usage()

    async def relay(self, call: RawCall, model: str | None) -> RawReply:
        """The client's own request: a raw call as it is, or a body of one of ``passthrough``'s formats with
        only the model rewritten (``relay_body`` sends it)."""
        if call.format == "raw":
            return await self.relay_raw(call)
        if call.format not in self.passthrough:
            raise unsupported(f"provider {self.id} cannot take {call.format} requests as they are")
        body = dict(call.body or {})
        if model is not None:
            body["model"] = model
        return await self.relay_body(call, body)

    async def relay_body(self, call: RawCall, body: dict[str, Any]) -> RawReply:
        raise unsupported(f"provider {self.id} cannot take {call.format} requests as they are")

    async def relay_raw(self, call: RawCall, root: str | None = None) -> RawReply:
        return await _relay_raw(self, call, root)

    async def send(self, path: str, body: bytes | None, stream: bool, method: str = "POST",
                   extra_headers: Mapping[str, str] | None = None, url: str | None = None) -> HttpReply:
        """One request; a 2xx/3xx reply with its body unread, or the error classified."""
        headers = await self.headers(stream)
        if extra_headers:
            headers.update(extra_headers)
        reply = await self.ctx.transport.request(method, url or self.base_url + path, body, headers,
                                                 self.timeouts)
        if reply.status < 400:
            return reply
        try:
            payload = await reply.read()
        except UpstreamError:
            payload = b""
        raise self.classify(reply.status, payload, reply.headers)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def relayed_bytes(call: RawCall, body: dict[str, Any]) -> bytes:
    """A relayed body's bytes: the client's own when ``body`` is still what it sent (the model already the
    upstream's name, nothing added), so a large prompt is never encoded again; else ``body`` encoded."""
    if call.raw_is_body and body == call.body:
        return call.raw
    return dumps(body)


def loads_object(body: bytes, what: str = "upstream") -> dict[str, Any]:
    """A JSON object from a provider, or a ``PROTOCOL`` failure."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise UpstreamError(502, f"{what} sent a body that is not JSON", kind=FailureKind.PROTOCOL) from None
    if not isinstance(obj, dict):
        raise UpstreamError(502, f"{what} sent JSON that is not an object", kind=FailureKind.PROTOCOL)
    return obj


# ---- raw pass-through (/{provider}/v1/...), shared by every HTTP provider -------------------------

_RAW_HEADERS = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after", "x-request-id", "request-id")


async def _relay_raw(provider: HttpProvider, call: RawCall, root: str | None = None) -> RawReply:
    """Any path with the provider's own credentials, the answer as it came, whatever its status; usage
    read (``provider.raw_usage``) from a whole body or from the last usage a stream reported.
    ``root``: the URL raw paths are relative to (default: the base URL without a trailing /v1, since
    raw paths start with their API version)."""
    base = root if root is not None else provider.base_url
    if root is None and base.endswith("/v1") and call.path.startswith("/v1"):
        base = base[:-3]
    headers = await provider.headers(call.stream)
    if "content-type" in call.headers:
        headers["content-type"] = call.headers["content-type"]
    reply = await provider.ctx.transport.request(
        call.method, base + call.path, call.raw if call.method not in ("GET", "HEAD") else None, headers,
        provider.timeouts)
    media = reply.headers.get("content-type", "application/json")
    kept = {k.lower(): v for k, v in reply.headers.items() if k.lower().startswith(_RAW_HEADERS)}
    if "text/event-stream" not in media:
        content = await reply.read()
        usage = provider.raw_usage(content) if reply.status < 400 else None
        return RawReply(status=reply.status, headers=kept, media_type=media, body=content,
                        **({"usage": usage} if usage is not None else {}))
    out = RawReply(status=reply.status, headers=kept, media_type=media)
    out.chunks = _relay_bytes(provider, reply, out)
    return out


async def _relay_bytes(provider: HttpProvider, reply: HttpReply, out: RawReply) -> AsyncIterator[bytes]:
    tail = b""
    try:
        async for data in reply.chunks():
            out.pieces += 1
            tail = (tail + data)[-8192:]
            yield data
        out.finished = True
        # streams report usage near their end (OpenAI's last chunk, Anthropic's message_delta, Gemini's
        # cumulative usageMetadata): the last data line that has some is the whole
        for line in reversed(tail.split(b"\n")):
            if line.startswith(b"data:") and b"sage" in line:
                usage = provider.raw_usage(line[5:].strip())
                if usage.input_tokens or usage.output_tokens:
                    out.usage.merge(usage)
                    break
    finally:
        reply.close()
