"""The HTTP protocol both HTTP services (edge, ui-api) run under uvicorn.

uvicorn's httptools protocol, but the 400 it answers itself for a request it cannot parse at all
(a request line or headers too long for the parser, broken framing) is JSON like every other error
the gateway makes, instead of plain text: no route, and so no caller's format, is known yet, so it
takes the service's general error shape.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


def json_error_protocol(error: dict) -> type[HttpToolsProtocol]:
    """An httptools protocol class whose own 400 has the JSON body ``{"error": error}`` (its message added)."""

    class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
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
