"""One exception tree for the edge: every failure a client can see is a ``GatewayError``.

It carries what went wrong in no client's format: an HTTP status, a message,
and the failure's ``FailureKind`` when an upstream failed (None: the
gateway's own refusal or fault). Each inbound codec renders it in its
caller's format (OpenAI or Anthropic error JSON, ``api/``). ``UpstreamError``
is one failed attempt at a provider: its kind says retry here? fail over?
counts against health?, and for a client error the provider diagnosed it
keeps the provider's own body and the format it is in. Transport and
provider errors are mapped into it once, in ``providers``.
"""

from __future__ import annotations

from llmgw_common.failures import FailureKind, kind_for_status, policy


class GatewayError(Exception):
    recorded = False  # True once its request has a usage event (the gateway's, after attempts upstream)

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, kind: FailureKind | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.kind = kind  # set when an upstream failed: a 5xx is then the upstream's, not the gateway's

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

    kind: FailureKind

    def __init__(self, status: int, message: str, kind: FailureKind | None = None,
                 upstream_body: bytes | None = None, upstream_format: str | None = None,
                 headers: dict[str, str] | None = None, retry_after_s: float | None = None):
        super().__init__(status, message, code="upstream_error" if status >= 500 else None, headers=headers,
                         kind=kind or kind_for_status(status))
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
