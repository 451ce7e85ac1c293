"""One error type for the edge: it knows its HTTP status, its OpenAI error shape and whether
another provider might succeed. Lower-level errors are mapped into it in ``providers``."""

from __future__ import annotations

import json


class GatewayError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, retryable: bool = False,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retryable = retryable
        self.headers = headers or {}

    def openai_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def openai_json(self) -> bytes:
        return json.dumps(self.openai_body()).encode()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code=code, param=param)


class UpstreamError(GatewayError):
    """An attempt at one provider failed. ``retryable``: another candidate may succeed."""

    def __init__(self, status: int, message: str, retryable: bool, upstream_body: bytes | None = None,
                 headers: dict[str, str] | None = None):
        type_ = "upstream_error" if retryable else "invalid_request_error"
        super().__init__(status, message, type_, code=None, retryable=retryable, headers=headers)
        self.upstream_body = upstream_body
