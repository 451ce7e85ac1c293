"""``/{provider}/v1/...``: one named provider, called directly with its configured key.

The request goes as it is (path, query, body: nothing rewritten) and the
answer comes back as it is, whatever its status. A request whose body names a
model the provider serves is admitted by the router like any other (limits,
cooldowns, accounting under ``provider/model``); other requests (model lists,
files, a model not in the config) go straight through. Usage is counted
whenever the answer carries a readable usage object. A caller whose gateway
key has limits (a budget...) may only read that way (GET): anything else the
router cannot meter is a 403 (``auth.check_metered``).

What the gateway itself answers there (its 401, 403, 404, 429...) is in the
provider's own error format, the one the caller's SDK for that provider reads:
Anthropic's for Anthropic-type providers, Google's for Gemini, OpenAI's for
the rest.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable, Mapping

from llmgw_common.config import GatewayConfig

from ..core.errors import GatewayError
from ..core.gateway import Exchange
from ..core.provider import RawCall
from ..core.types import ChatResponse, EmbeddingResponse, StreamEvent
from . import anthropic_messages
from .body import json_object
from .openai_chat import error_body

MAX_PATH = 2048

# google.rpc.Code names by HTTP status: what Google's SDKs read in ``error.status``
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ABORTED", 413: "INVALID_ARGUMENT", 414: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                  499: "CANCELLED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def google_error_body(err: GatewayError) -> bytes:
    """Google's error JSON (the Gemini API's): ``{"error": {"code", "message", "status"}}``."""
    status = _GOOGLE_STATUS.get(err.status, "INTERNAL" if err.status >= 500 else "FAILED_PRECONDITION")
    return json.dumps({"error": {"code": err.status, "message": err.message, "status": status}}).encode()


def error_body_for(provider_type: str | None) -> Callable[[GatewayError], bytes]:
    """The error format of a provider type's own API (unknown provider: OpenAI's)."""
    if provider_type in ("anthropic", "claude_code"):
        return anthropic_messages.error_body
    if provider_type in ("gemini", "gemini_cli"):
        return google_error_body
    return error_body


class PassthroughCodec:
    format = "raw"
    error_format = "openai"
    endpoint = "passthrough"
    render_error = staticmethod(error_body)

    def render_response(self, resp: ChatResponse) -> bytes:  # pragma: no cover - never translated
        raise NotImplementedError

    def render_stream(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:  # pragma: no cover
        raise NotImplementedError

    def render_embeddings(self, resp: EmbeddingResponse) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def stream_error(self, err: GatewayError) -> bytes:
        return b"data: " + error_body(err) + b"\n\n"


def parse(config: GatewayConfig, provider_id: str, method: str, path: str, query: str, raw: bytes,
          headers: Mapping[str, str]) -> tuple[PassthroughCodec, Exchange]:
    provider = config.provider(provider_id)
    if provider is None or not provider.enabled:
        raise GatewayError(404, f"No provider `{provider_id}` is configured (or it is disabled).",
                           code="provider_not_found")
    if len(path) + len(query) > MAX_PATH:
        raise GatewayError(414, "The URL is too long.", code="uri_too_long")
    body: Any = None
    if raw and "json" in headers.get("content-type", "application/json"):
        try:
            body = json_object(raw, config.edge.max_json_depth)
        except GatewayError:
            body = None  # not ours to judge: the provider answers it as it is
    model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
    stream = bool(isinstance(body, dict) and body.get("stream") is True) \
        or "text/event-stream" in headers.get("accept", "")
    routed = model is not None and provider.model(model) is not None
    call = RawCall("raw", body if isinstance(body, dict) else None, raw, stream=stream, headers=headers,
                   path=path + (f"?{query}" if query else ""), method=method)
    exchange = Exchange(model=model or "", stream=stream, raw=call, headers=headers, provider=provider_id,
                        routed=routed, estimated_prompt_tokens=0)
    return PassthroughCodec(), exchange
