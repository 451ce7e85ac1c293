"""The starter config ``llmgw run`` writes when none exists.

It works with no API keys at all (the local demo provider), and enables a real
provider for every well-known key found in the environment. Keys are written
as ``${ENV_VAR}`` references, never as literals.
"""

from __future__ import annotations

from typing import Mapping

# (env var, provider block). Limits are each provider's published free-tier
# limits where one exists; adjust them to your account.
_PROVIDERS: list[tuple[str, str]] = [
    ("GEMINI_API_KEY", """\
  - id: gemini                      # Google AI Studio, native API (free tier)
    type: gemini
    api_key: ${GEMINI_API_KEY}
    free_tier: true
    priority: 10
    limits: {requests_per_minute: 15, requests_per_day: 1500}
    models:
      - name: gemini-2.0-flash
      - name: gemini-2.5-flash
"""),
    ("GROQ_API_KEY", """\
  - id: groq
    type: openai
    base_url: https://api.groq.com/openai/v1
    api_key: ${GROQ_API_KEY}
    free_tier: true
    priority: 20
    limits: {requests_per_minute: 30, requests_per_day: 1000}
    models:
      - name: llama-3.3-70b
        upstream: llama-3.3-70b-versatile
      - name: llama-3.1-8b
        upstream: llama-3.1-8b-instant
"""),
    ("OPENROUTER_API_KEY", """\
  - id: openrouter
    type: openai
    base_url: https://openrouter.ai/api/v1
    api_key: ${OPENROUTER_API_KEY}
    priority: 30
    models:
      - name: llama-3.3-70b           # OpenRouter's free variant of the same model
        upstream: meta-llama/llama-3.3-70b-instruct:free
        price: {input_per_mtok: 0, output_per_mtok: 0}
      - name: gpt-4o-mini
        upstream: openai/gpt-4o-mini
"""),
    ("MISTRAL_API_KEY", """\
  - id: mistral
    type: openai
    base_url: https://api.mistral.ai/v1
    api_key: ${MISTRAL_API_KEY}
    priority: 40
    models:
      - name: mistral-small-latest
      - name: mistral-large-latest
"""),
    ("ANTHROPIC_API_KEY", """\
  - id: anthropic                   # native Messages API: prompt caching, thinking, Claude Code betas
    type: anthropic
    api_key: ${ANTHROPIC_API_KEY}
    priority: 60
    models:
      - name: claude-sonnet-4-5
      - name: claude-haiku-4-5
"""),
    ("OPENAI_API_KEY", """\
  - id: openai
    type: openai
    base_url: https://api.openai.com/v1
    api_key: ${OPENAI_API_KEY}
    priority: 50
    models:
      - name: gpt-4o-mini
      - name: gpt-4o
      - name: gpt-4.1-mini
"""),
]


def starter_config(env: Mapping[str, str], demo_port: int = 18090) -> str:
    found = [name for name, _ in _PROVIDERS if env.get(name)]
    blocks = "".join(block for name, block in _PROVIDERS if env.get(name))
    note = (f"# Providers enabled because their key was in the environment: {', '.join(found)}.\n" if found else
            "# No provider API key was found in the environment; only the demo provider is enabled.\n"
            "# Set e.g. GROQ_API_KEY or GEMINI_API_KEY and delete this file to regenerate it.\n")
    return f"""\
# LLM Gateway config, written by `llmgw run` because none existed.
# Check it with: llmgw config check <this file>
{note}version: 1

# A real local OpenAI-compatible server that answers deterministically, so the
# gateway works with no API keys. `llmgw run` starts it.
demo:
  enabled: true
  host: 127.0.0.1
  port: {demo_port}

providers:
  - id: demo
    type: openai
    base_url: http://127.0.0.1:{demo_port}/v1
    free_tier: true
    priority: 90
    models:
      - name: demo-chat
        price: {{input_per_mtok: 0, output_per_mtok: 0}}
  - id: demo-anthropic               # the same demo server's Anthropic Messages face
    type: anthropic
    base_url: http://127.0.0.1:{demo_port}
    free_tier: true
    priority: 90
    models:
      - name: demo-claude
        upstream: demo-chat
        price: {{input_per_mtok: 0, output_per_mtok: 0}}
{blocks}
routing:
  aliases: {{}}
  decide_timeout_s: 2
  total_timeout_s: 300

usage:
  stream_max_age_days: 90
  stream_max_bytes: 5368709120
"""
