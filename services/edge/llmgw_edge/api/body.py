"""Reading a client's body: bounded in size and nesting before anything else looks at it.

Every codec reads its body here, so a 50 MB body is refused with 413 while it
arrives (not after it was buffered whole), and a 10,000-level nested JSON
document is a 400 like any other bad JSON, never a RecursionError.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Mapping

import msgspec

from ..core.errors import GatewayError, bad_request


def too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The request body is larger than this gateway accepts ({limit} bytes).",
                        code="request_too_large")


async def read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> bytes:
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def json_object(raw: bytes, max_depth: int = 100) -> dict[str, Any]:
    try:
        body = _decode(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("We could not parse the JSON body of your request. The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    if _deeper_than(body, max_depth):
        raise bad_request(f"The JSON body is nested deeper than {max_depth} levels.")
    return body


def _decode(raw: bytes) -> Any:
    """msgspec's decoder, several times faster than Python's json on every body; a document it refuses is read
    by Python's json, which decides (it also takes a byte-order mark, UTF-16, NaN): the same answer as before."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


def _deeper_than(value: Any, limit: int) -> bool:
    """Iterative: a deep document must not cost a deep Python stack."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False
