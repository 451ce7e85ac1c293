"""Provider adapters: one module per provider type behind one interface (``base.Provider``).

Adding a provider type = one module here plus its name in ``llmgw_common.config.ProviderType``.
"""

from __future__ import annotations

from pathlib import Path

from llmgw_common.config import GatewayConfig, ProviderConfig, resolve_secret

from .base import Provider, ProviderContext
from .http import Transport
from .openai import OpenAIProvider

PROVIDER_TYPES: dict[str, type[Provider]] = {"openai": OpenAIProvider}


def _register_optional() -> None:
    # each module registers when present; a type without its module is refused at start-up
    import importlib

    for module, name in (("anthropic", "AnthropicProvider"), ("gemini", "GeminiProvider"),
                         ("copilot", "CopilotProvider"), ("claude_code", "ClaudeCodeProvider"),
                         ("gemini_cli", "GeminiCliProvider")):
        try:
            cls = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise
            continue
        PROVIDER_TYPES[cls.type] = cls


_register_optional()


def build_provider(config: ProviderConfig, transport: Transport, state_dir: Path) -> Provider:
    cls = PROVIDER_TYPES.get(config.type)
    if cls is None:
        raise ValueError(f"provider {config.id}: type {config.type!r} has no adapter in this edge")
    return cls(config, ProviderContext(transport=transport, secret=resolve_secret(config.api_key),
                                       state_dir=state_dir))


def build_providers(config: GatewayConfig, transport: Transport, state_dir: Path) -> dict[str, Provider]:
    return {p.id: build_provider(p, transport, state_dir) for p in config.providers}
