"""The HTTP transport every HTTP provider uses, and the reply it returns.

aiohttp rather than httpx on this path: under load httpx/httpcore spent most
of the edge's CPU (see docs/benchmarks.md). Every transport failure is mapped
to ``UpstreamError`` here, once, so nothing above this module knows the
library. ``Transport`` is the seam tests replace (``MockTransport`` in
``providers/testing.py``): providers never touch aiohttp themselves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Mapping, Protocol

import aiohttp

from llmgw_common.failures import FailureKind

from ..core.errors import UpstreamError


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # TCP + TLS set-up
    read: float = 60.0  # the longest silence while reading (before the first byte too)
    first_byte: float | None = None  # request sent -> status line; None: ``read``

    @classmethod
    def of(cls, value: float | Timeouts) -> Timeouts:
        return value if isinstance(value, Timeouts) else cls(connect=min(10.0, value), read=value)


class HttpReply(Protocol):
    """An upstream answer whose body has not been read yet (any status)."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def lines(self) -> AsyncIterator[str]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    async def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
                      timeouts: float | Timeouts) -> HttpReply: ...

    async def close(self) -> None: ...


def transport_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamError(504, f"upstream timed out ({type(exc).__name__})", kind=FailureKind.TIMEOUT)
    return UpstreamError(502, f"upstream unreachable ({type(exc).__name__})", kind=FailureKind.CONNECTION)


class AiohttpReply:
    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response
        self.status = response.status
        self.headers = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc) from None
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; breaks become ``UpstreamError``."""
        try:
            async for data in self._response.content.iter_any():
                yield data
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc) from None

    async def lines(self) -> AsyncIterator[str]:
        """Lines of the body without their line endings; breaks become ``UpstreamError``."""
        content = self._response.content
        try:
            while True:
                raw = await content.readline()
                if not raw:
                    return
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise transport_error(exc) from None

    def close(self) -> None:
        self._response.close()


class AiohttpTransport:
    """One pooled session per process (created inside the running loop): no per-request set-up."""

    def __init__(self, session: aiohttp.ClientSession | None = None):
        self.session = session or create_session()

    async def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
                      timeouts: float | Timeouts) -> AiohttpReply:
        """Returns once the status line and headers are in. The timeouts bound the connection set-up, the
        wait for the first byte and every silence while reading: never a whole (possibly long) stream."""
        t = Timeouts.of(timeouts)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read)
        first_byte = asyncio.timeout(t.first_byte)
        try:
            async with first_byte:
                response = await self.session.request(method, url, data=body, headers=headers, timeout=timeout,
                                                      allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            if first_byte.expired():
                raise UpstreamError(504, f"upstream sent no answer within {t.first_byte:g}s (first byte)",
                                    kind=FailureKind.TIMEOUT) from None
            raise transport_error(exc) from None
        return AiohttpReply(response)

    async def close(self) -> None:
        await self.session.close()


def create_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    # SSE lines and whole JSON bodies can be long: allow 8 MiB lines. No cookie jar: one session serves every
    # client, so an upstream's Set-Cookie must never ride along with someone else's request (and keeping
    # and matching cookies costs every request)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True,
                                 read_bufsize=2**16,
                                 max_line_size=8 * 2**20, max_field_size=2**16, raise_for_status=False)


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, str]]:
    """``(event name, data)`` per server-sent event; comments skipped, multi-line data joined."""
    event: str | None = None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            event = line[6:].strip()
        # ":" comments, id:, retry: are nothing to us
    if data:
        yield event, "\n".join(data)
