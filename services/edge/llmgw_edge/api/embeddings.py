"""OpenAI embeddings in and out: ``POST /v1/embeddings``, routed, limited and counted like chat.

OpenAI-compatible providers get the client's body as it is; others (Gemini)
get the core request and their answer is rendered back in OpenAI's shape.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Mapping

from ..core.errors import GatewayError, bad_request
from ..core.gateway import Exchange
from ..core.provider import RawCall
from ..core.tokens import estimate_text_tokens
from ..core.types import ChatResponse, EmbeddingRequest, EmbeddingResponse, StreamEvent
from .body import json_object
from .openai_chat import error_body

MAX_INPUTS = 2048  # OpenAI's own limit per request


class EmbeddingsCodec:
    format = "embeddings"
    error_format = "openai"
    endpoint = "embeddings"
    render_error = staticmethod(error_body)

    def __init__(self, max_depth: int = 100) -> None:
        self.max_depth = max_depth

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> Exchange:
        body = json_object(raw, self.max_depth)
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise bad_request("you must provide a model parameter", param="model")
        inputs = _inputs(body.get("input"))
        dimensions = body.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)
                                       or dimensions < 1):
            raise bad_request("'dimensions' must be a positive integer", param="dimensions")
        encoding = body.get("encoding_format")
        if encoding is not None and encoding not in ("float", "base64"):
            raise bad_request("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
        tokens = sum(estimate_text_tokens(x) if isinstance(x, str) else len(x) for x in inputs)
        return Exchange(model=model, stream=False, headers=headers, max_tokens=0,
                        raw=RawCall("embeddings", body, raw, headers=headers),
                        embedding=EmbeddingRequest(model, inputs, dimensions, encoding,
                                                   body.get("user") if isinstance(body.get("user"), str) else None),
                        estimated_prompt_tokens=max(1, tokens))

    def render_embeddings(self, resp: EmbeddingResponse) -> bytes:
        return json.dumps({
            "object": "list", "model": resp.model,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(resp.vectors)],
            "usage": {"prompt_tokens": resp.usage.input_tokens, "total_tokens": resp.usage.input_tokens}}).encode()

    def render_response(self, resp: ChatResponse) -> bytes:  # pragma: no cover - not a chat endpoint
        raise NotImplementedError

    def render_stream(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:  # pragma: no cover
        raise NotImplementedError

    def stream_error(self, err: GatewayError) -> bytes:  # pragma: no cover - never streamed
        return error_body(err)


def _inputs(raw: Any) -> list:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
            return [raw]  # one input as token ids
        if len(raw) > MAX_INPUTS:
            raise bad_request(f"'input' may hold at most {MAX_INPUTS} items", param="input")
        if all(isinstance(x, str) for x in raw) or all(
                isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
                for x in raw):
            return raw
    raise bad_request("'input' must be a non-empty string, array of strings or array of token arrays",
                      param="input")
