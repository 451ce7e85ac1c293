"""Provider adapters: one module per provider type. ``adapter_for`` picks by ``type``."""

from __future__ import annotations

from . import openai

ADAPTERS = {"openai": openai}


def adapter_for(provider_type: str):
    return ADAPTERS[provider_type]
