"""Streamed completions under load: the time to the first SSE ``data:`` line, over raw sockets."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx


class StreamedResponse:
    """Reads one HTTP/1.1 response to a streaming request, fed as it arrives: the status, when the first
    SSE ``data:`` line began to arrive, and when the response ended (chunked, Content-Length, or the
    connection's close)."""

    def __init__(self) -> None:
        self._head = b""
        self.status: int | None = None
        self.keep_alive = True
        self._chunked = False
        self._length: int | None = None  # Content-Length, counting down
        self._buffer = b""  # undecoded chunked bytes
        self._chunk_left = 0  # data bytes of the current chunk still to come
        self._chunk_crlf = False  # the CRLF after a chunk's data still to come
        self._body_tail = b"\n"  # the last body bytes, to find "data:" at a line start across pieces
        self.first_data_at: float | None = None
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        if self.status is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end == -1:
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4:]
            lines = head.split("\r\n")
            self.status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            self._chunked = "chunked" in headers.get("transfer-encoding", "")
            if not self._chunked and "content-length" in headers:
                self._length = int(headers["content-length"])
            self.keep_alive = headers.get("connection") != "close" and (self._chunked or self._length is not None)
            if self._length == 0:
                self.done = True
        if self._chunked:
            self._feed_chunked(data, now)
        elif data:
            if self._length is not None:
                data = data[:self._length]
                self._length -= len(data)
                self.done = self._length <= 0
            self._body(data, now)

    def _feed_chunked(self, data: bytes, now: float) -> None:
        """De-chunks as bytes arrive: a chunk's data counts from its first bytes, not only once complete."""
        self._buffer += data
        while not self.done:
            if self._chunk_left:
                if not self._buffer:
                    return
                piece = self._buffer[:self._chunk_left]
                self._buffer = self._buffer[len(piece):]
                self._chunk_left -= len(piece)
                self._chunk_crlf = self._chunk_left == 0
                self._body(piece, now)
            elif self._chunk_crlf:
                if len(self._buffer) < 2:
                    return
                self._buffer, self._chunk_crlf = self._buffer[2:], False
            else:
                line_end = self._buffer.find(b"\r\n")
                if line_end == -1:
                    return
                size = int(self._buffer[:line_end].split(b";")[0], 16)
                if size == 0:
                    # the last chunk: then optional trailers, ended by an empty line
                    self.done = self._buffer.find(b"\r\n\r\n", line_end) != -1
                    return
                self._buffer, self._chunk_left = self._buffer[line_end + 2:], size

    def _body(self, data: bytes, now: float) -> None:
        if self.first_data_at is None and data:
            text = self._body_tail + data
            if b"\ndata:" in text or b"\rdata:" in text:
                self.first_data_at = now
            self._body_tail = text[-6:]

    def eof(self) -> None:
        if self.status is not None and not self._chunked and self._length is None:
            self.done = True  # a body delimited by the connection's close
        self.keep_alive = False


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of non-empty ``values``."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


@dataclass
class StreamRun:
    ttfb_s: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def failed(self, why: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or why


def stream_request(host: str, port: int, path: str, body: dict, headers: dict[str, str]) -> bytes:
    payload = json.dumps({**body, "stream": True}).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
            "Accept: text/event-stream", f"Content-Length: {len(payload)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def _stream_worker(host: str, port: int, request: bytes, deadline: float, run: StreamRun) -> None:
    reader = writer = None
    try:
        while time.monotonic() < deadline:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            sent = time.perf_counter()
            writer.write(request)
            response = StreamedResponse()
            while not response.done:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    response.eof()
                    break
                response.feed(data, time.perf_counter())
            if response.status != 200 or response.first_data_at is None or not response.done:
                run.failed(f"status {response.status}, data line {'seen' if response.first_data_at else 'not seen'}"
                           f", {'complete' if response.done else 'cut short'}")
            else:
                run.ttfb_s.append(response.first_data_at - sent)
            if not (response.done and response.keep_alive):
                writer.close()
                reader = writer = None
    except (TimeoutError, OSError, ValueError) as exc:
        run.failed(f"{type(exc).__name__}: {exc}")
    finally:
        if writer is not None:
            writer.close()


def measure_ttfb(url: str, body: dict, headers: dict[str, str], concurrency: int, duration_s: float) -> StreamRun:
    """``concurrency`` streams at once, one after the other on kept-alive connections, for ``duration_s``."""
    target = httpx.URL(url)
    request = stream_request(target.host, target.port, target.raw_path.decode(), body, headers)
    run = StreamRun()

    async def main() -> None:
        deadline = time.monotonic() + duration_s
        await asyncio.gather(*(_stream_worker(target.host, target.port, request, deadline, run)
                               for _ in range(concurrency)))

    asyncio.run(main())
    return run


