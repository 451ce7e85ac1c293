"""Request-body schemas of the edge's routes, for its OpenAPI document only.

The codecs parse and validate bodies themselves (a pydantic model per request
would cost the hot path and reject fields the providers accept); these
schemas describe what they accept, so clients and fuzzers (the bad-input
suite runs schemathesis on them) know the shape. Every field the gateway does
not name passes through: ``additionalProperties`` stays open.
"""

from __future__ import annotations

from typing import Any

_TEXT_OR_PARTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]}
_TOOLS = {"type": "array", "items": {"type": "object"}}

OPENAI_CHAT: dict[str, Any] = {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 256},
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role"],
            "properties": {"role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
                           "content": _TEXT_OR_PARTS, "tool_calls": _TOOLS, "tool_call_id": {"type": "string"}}}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number"}, "top_p": {"type": "number"}, "n": {"type": "integer", "minimum": 1},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "tools": _TOOLS, "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "response_format": {"type": "object"}, "user": {"type": "string"},
    },
}

ANTHROPIC_MESSAGES: dict[str, Any] = {
    "type": "object", "required": ["model", "max_tokens", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 256},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": ["user", "assistant"]},
                           "content": {"anyOf": [{"type": "string"},
                                                 {"type": "array", "items": {"type": "object"}}]}}}},
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "stream": {"type": "boolean"}, "temperature": {"type": "number"}, "top_p": {"type": "number"},
        "top_k": {"type": "integer"}, "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "tools": _TOOLS, "tool_choice": {"type": "object"}, "thinking": {"type": "object"},
        "metadata": {"type": "object"},
    },
}

ANTHROPIC_COUNT_TOKENS: dict[str, Any] = {
    **ANTHROPIC_MESSAGES, "required": ["model", "messages"],
}

OPENAI_RESPONSES: dict[str, Any] = {
    "type": "object", "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 256},
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "instructions": {"type": "string"}, "stream": {"type": "boolean"},
        "max_output_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number"},
        "tools": _TOOLS, "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "text": {"type": "object"}, "reasoning": {"type": "object"}, "store": {"type": "boolean"},
    },
}

EMBEDDINGS: dict[str, Any] = {
    "type": "object", "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 256},
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                            {"type": "array", "items": {"type": "integer"}},
                            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]},
        "dimensions": {"type": "integer", "minimum": 1},
        "encoding_format": {"enum": ["float", "base64"]}, "user": {"type": "string"},
    },
}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body has this schema."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
