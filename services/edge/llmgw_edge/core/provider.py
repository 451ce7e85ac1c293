"""What the gateway needs from a provider: the interface ``providers/`` implements.

The gateway calls a provider in one of two ways:

- **translated**: ``chat`` / ``chat_stream`` / ``embed`` take format-neutral
  core types and return core types; the inbound codec renders them in the
  client's format.
- **pass-through**: ``relay`` sends the client's own body (a ``RawCall``, the
  model rewritten) when the provider speaks the client's format
  (``can_relay``), and relays the answer byte for byte (a ``RawReply``),
  reading only the usage on the way.

Failures are ``UpstreamError`` with a ``FailureKind``. Defined here, in the
core, so the gateway and the codecs depend on this contract, never on a
provider module (nor on the HTTP client they use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Protocol

from llmgw_common.config import ProviderConfig

from .types import ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Meter, StreamEvent


@dataclass
class RawCall:
    """A client's request in the provider's own format, for ``relay``."""

    format: str  # openai_chat | openai_responses | embeddings | anthropic_messages | anthropic_count_tokens | raw
    body: dict[str, Any] | None  # the client's JSON body (None for raw bodies that are not JSON)
    raw: bytes
    raw_is_body: bool = True  # ``raw`` is ``body`` as the client wrote it (False: the codec changed ``body``)
    stream: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)  # the client's headers (lower-case names)
    include_usage: bool = False  # OpenAI streams: the client asked for the usage chunk
    path: str = ""  # raw: the path after /{provider}, with its query string
    method: str = "POST"


@dataclass(kw_only=True)
class RawReply(Meter):
    """An upstream answer relayed as it came; its ``Meter`` fills while ``chunks`` is read."""

    status: int
    headers: dict[str, str]
    media_type: str
    body: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None


class Provider(Protocol):
    """One configured provider, built once with its secret and the shared transport."""

    config: ProviderConfig
    genai_system: str  # OpenTelemetry's gen_ai.system for its spans (tracing on)

    @property
    def id(self) -> str: ...

    def can_relay(self, fmt: str) -> bool:
        """Whether ``relay`` takes a request of inbound format ``fmt`` as it is."""
        ...

    async def chat(self, req: ChatRequest, model: str) -> ChatResponse: ...

    def chat_stream(self, req: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        """Stream events; raises ``UpstreamError`` before the first event if the provider refuses."""
        ...

    async def embed(self, req: EmbeddingRequest, model: str) -> EmbeddingResponse: ...

    async def relay(self, call: RawCall, model: str | None) -> RawReply: ...

    async def close(self) -> None: ...
