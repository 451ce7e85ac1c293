"""The HTTP protocol both HTTP services (edge, ui-api) run under uvicorn.

uvicorn's httptools protocol, with two changes:

- the 400 it answers itself for a request it cannot parse at all (a request line or headers too long
  for the parser, broken framing) is JSON like every other error the gateway makes, instead of plain
  text: no route, and so no caller's format, is known yet, so it takes the service's general error shape;
- what it writes in one turn of the event loop goes to the socket in one write: uvicorn writes a
  response's status line and headers, then its body, each with its own system call, and the first one
  wakes the client before the body is there (measured: docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


def json_error_protocol(error: dict) -> type[HttpToolsProtocol]:
    """An httptools protocol class whose own 400 has the JSON body ``{"error": error}`` (its message added)."""

    class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": {**error, "message": f"{msg} The request line or headers are malformed "
                                                            "or too long (keep URLs under 8 kB)."}}).encode()
            content = [STATUS_LINE[400]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([b"content-type: application/json\r\n",
                            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                            b"connection: close\r\n", b"\r\n", body])
            self.transport.write(b"".join(content))
            self.transport.close()

    return JsonErrorHttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes made in one turn of the event loop reach the socket as one write, at the
    end of that turn (``close`` sends what is pending first). Everything else is the wrapped transport's."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)
