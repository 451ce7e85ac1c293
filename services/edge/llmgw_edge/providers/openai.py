"""OpenAI-compatible upstreams (OpenAI, Groq, Mistral, OpenRouter, Gemini's OpenAI endpoint,
vLLM, llama.cpp, Ollama...). Maps every transport failure and error status into UpstreamError."""

from __future__ import annotations

import json

import httpx

from llmgw_common.config import ProviderConfig

from llmgw_common.logs import redact

from ..errors import UpstreamError

# statuses where another provider may well succeed: rate limits, outages, and
# provider-side credential / model problems that are not the client's fault
_RETRYABLE = {401, 403, 404, 408, 409, 425, 429}


def build_request(client: httpx.AsyncClient, provider: ProviderConfig, secret: str | None, path: str,
                  body: bytes, stream: bool) -> httpx.Request:
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    headers.update(provider.headers)
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    timeout = httpx.Timeout(provider.timeout_s, connect=min(10.0, provider.timeout_s))
    return client.build_request("POST", provider.base_url + path, content=body, headers=headers,
                                timeout=timeout)


async def send(client: httpx.AsyncClient, request: httpx.Request, stream: bool) -> httpx.Response:
    """Send; return a 2xx response (body not yet read when streaming) or raise UpstreamError."""
    try:
        response = await client.send(request, stream=stream)
    except httpx.TimeoutException as exc:
        raise UpstreamError(504, f"upstream timed out ({type(exc).__name__})", retryable=True) from None
    except httpx.TransportError as exc:
        raise UpstreamError(502, f"upstream unreachable ({type(exc).__name__})", retryable=True) from None
    if response.status_code < 400:
        return response
    try:
        body = await response.aread()
    except httpx.HTTPError:
        body = b""
    finally:
        await response.aclose()
    status = response.status_code
    retryable = status >= 500 or status in _RETRYABLE
    keep = {k: v for k, v in response.headers.items()
            if k.lower() == "retry-after" or k.lower().startswith("x-ratelimit-")}
    raise UpstreamError(status, _error_message(status, body), retryable=retryable, upstream_body=body,
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
