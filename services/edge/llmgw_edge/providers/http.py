"""The one HTTP client the edge uses for every upstream, and the response wrapper adapters return.

aiohttp rather than httpx on this path: under load httpx/httpcore spent most
of the edge's CPU (see docs/benchmarks.md). Every transport failure is mapped
to ``UpstreamError`` here, so nothing above this module knows the library.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp

from ..errors import UpstreamError


def create_session() -> aiohttp.ClientSession:
    """One pooled session per process (created inside the running loop)."""
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    # SSE lines and whole JSON bodies can be long: allow 8 MiB lines
    return aiohttp.ClientSession(connector=connector, auto_decompress=True, read_bufsize=2**16,
                                 max_line_size=8 * 2**20, max_field_size=2**16, raise_for_status=False)


def _transport_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamError(504, f"upstream timed out ({type(exc).__name__})", retryable=True)
    return UpstreamError(502, f"upstream unreachable ({type(exc).__name__})", retryable=True)


class UpstreamResponse:
    """A 2xx upstream response whose body has not been read yet."""

    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _transport_error(exc) from None
        finally:
            self._response.release()

    async def lines(self) -> AsyncIterator[str]:
        """Lines of the body without their line endings; breaks become ``UpstreamError``."""
        content = self._response.content
        try:
            while True:
                raw = await content.readline()
                if not raw:
                    return
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise _transport_error(exc) from None

    def close(self) -> None:
        self._response.close()


async def post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
               timeout_s: float) -> UpstreamResponse | tuple[int, bytes, dict[str, str]]:
    """POST; a 2xx gives an ``UpstreamResponse``, anything else ``(status, body, headers)``.

    ``timeout_s`` bounds the connection set-up and every wait for data, not the
    whole (possibly long) stream.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, timeout_s), sock_read=timeout_s)
    try:
        response = await session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise _transport_error(exc) from None
    if response.status < 400:
        return UpstreamResponse(response)
    try:
        payload = await response.read()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        payload = b""
    finally:
        response.release()
    return response.status, payload, dict(response.headers)
