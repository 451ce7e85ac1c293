"""Provider adapters: one module per provider type, each implementing the core's ``Provider`` interface
(``core/provider.py``) on the shared base (``base.BaseProvider``).

Adding a provider type = one module here, its class in ``PROVIDER_TYPES`` and its name in
``llmgw_common.config.ProviderType``.
"""

from __future__ import annotations

from pathlib import Path

from llmgw_common.config import ProviderConfig, resolve_secret

from .anthropic import AnthropicProvider
from .base import BaseProvider, ProviderContext
from .claude_code import ClaudeCodeProvider
from .copilot import CopilotProvider
from .gemini import GeminiProvider
from .gemini_cli import GeminiCliProvider
from .http import Transport
from .openai import OpenAIProvider

PROVIDER_TYPES: dict[str, type[BaseProvider]] = {cls.type: cls for cls in (
    OpenAIProvider, AnthropicProvider, GeminiProvider, CopilotProvider, ClaudeCodeProvider, GeminiCliProvider)}


def build_provider(config: ProviderConfig, transport: Transport, state_dir: Path) -> BaseProvider:
    cls = PROVIDER_TYPES.get(config.type)
    if cls is None:
        raise ValueError(f"provider {config.id}: type {config.type!r} has no adapter in this edge")
    secret = resolve_secret(getattr(config, "api_key", None))  # the CLI types have none: their own login
    return cls(config, ProviderContext(transport=transport, secret=secret,
                                       state_dir=state_dir))
