"""One exception tree for the edge: every failure a client can see is a ``GatewayError``.

It knows its HTTP status and message; each inbound codec renders it in its
caller's format (OpenAI or Anthropic error JSON). ``UpstreamError`` is one
failed attempt at a provider: it carries the shared ``FailureKind`` (retry
here? fail over? counts against health?) and, for a client error the provider
diagnosed, the provider's own body and the format it is in. Transport and
provider errors are mapped into it once, in ``providers``.
"""

from __future__ import annotations

from llmgw_common.failures import FailureKind, kind_for_status, policy

# OpenAI error `type` by status: one table, used for every error the gateway makes
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
                 413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
                 429: "rate_limit_exceeded"}
# Anthropic error `type` by status (its documented set)
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error",
                    529: "overloaded_error"}


def openai_type(status: int) -> str:
    return _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def anthropic_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


class GatewayError(Exception):
    recorded = False  # True once its request has a usage event (the gateway's, after attempts upstream)

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.type = type_ or openai_type(status)  # the OpenAI `type`; Anthropic's comes from the status

    @property
    def retryable(self) -> bool:
        return False


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


class UpstreamError(GatewayError):
    """One attempt at one provider failed.

    ``upstream_body`` / ``upstream_format``: the provider's own error body and
    its wire format ("openai", "anthropic", ...), returned verbatim to a client
    of the same format when the failure is the client's (``BAD_REQUEST``).
    """

    def __init__(self, status: int, message: str, kind: FailureKind | None = None,
                 upstream_body: bytes | None = None, upstream_format: str | None = None,
                 headers: dict[str, str] | None = None, retry_after_s: float | None = None):
        super().__init__(status, message, code="upstream_error" if status >= 500 else None, headers=headers,
                         type_=openai_type(status) if status < 500 else "upstream_error")
        self.kind = kind or kind_for_status(status)
        self.upstream_body = upstream_body
        self.upstream_format = upstream_format
        self.retry_after_s = retry_after_s  # when the provider said how long to wait (429, quota)

    @property
    def retryable(self) -> bool:
        """Another provider may succeed."""
        return policy(self.kind).fail_over

    @property
    def retry_here(self) -> bool:
        return policy(self.kind).retry_here


def unsupported(what: str) -> UpstreamError:
    return UpstreamError(400, what, kind=FailureKind.UNSUPPORTED)
