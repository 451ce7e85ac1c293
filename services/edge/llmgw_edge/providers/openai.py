"""OpenAI-compatible upstreams (OpenAI, Groq, Mistral, OpenRouter, Gemini's OpenAI endpoint,
vLLM, llama.cpp, Ollama...). Classifies every error status into UpstreamError."""

from __future__ import annotations

import json

import aiohttp

from llmgw_common.config import ProviderConfig
from llmgw_common.logs import redact

from ..errors import UpstreamError
from .http import UpstreamResponse, post

# statuses where another provider may well succeed: rate limits, outages, and
# provider-side credential / model problems that are not the client's fault
_RETRYABLE = {401, 403, 404, 408, 409, 425, 429}


def _headers(provider: ProviderConfig, secret: str | None, stream: bool) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    headers.update(provider.headers)
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    return headers


async def send(session: aiohttp.ClientSession, provider: ProviderConfig, secret: str | None, path: str,
               body: bytes, stream: bool) -> UpstreamResponse:
    """POST to the provider; a 2xx response (body unread) or ``UpstreamError``."""
    result = await post(session, provider.base_url + path, body, _headers(provider, secret, stream),
                        provider.timeout_s)
    if isinstance(result, UpstreamResponse):
        return result
    status, payload, headers = result
    retryable = status >= 500 or status in _RETRYABLE
    keep = {k.lower(): v for k, v in headers.items()
            if k.lower() == "retry-after" or k.lower().startswith(("x-ratelimit-", "anthropic-ratelimit-"))}
    raise UpstreamError(status, _error_message(status, payload), retryable=retryable, upstream_body=payload,
                        headers=keep)


def _error_message(status: int, body: bytes) -> str:
    # upstream messages sometimes echo part of the key ("Incorrect API key provided: sk-...")
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            return f"upstream {status}: {redact(str(err['message'])[:500])}"
        if isinstance(err, str):
            return f"upstream {status}: {redact(err[:500])}"
    except (ValueError, AttributeError):
        pass
    return f"upstream {status}"
