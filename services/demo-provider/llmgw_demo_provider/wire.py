"""The OpenAI wire format: request validation, response bodies, chunks and error bodies.

Pure functions, no I/O. Shapes and error messages follow what api.openai.com
returns, because the gateway's adapters are tested against this server.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

from . import replies

MODEL_CREATED = 1_700_000_000
OWNED_BY = "llmgw-demo"
SYSTEM_FINGERPRINT = "fp_llmgw_demo"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
ECHO_MAX_WORDS = replies.ECHO_MAX_WORDS
WORDS_PER_CHUNK = replies.WORDS_PER_CHUNK
EMBEDDING_DIMENSIONS = 16
# Counted like OpenAI's chat formatting overhead: a few tokens per message plus reply priming.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3



class OpenAIError(Exception):
    """An error answer: HTTP status plus OpenAI's {"error": {...}} body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------- errors


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")


def invalid_url(method: str, path: str) -> OpenAIError:
    return OpenAIError(404, f"Invalid URL ({method} {path})")


def invalid_api_key() -> OpenAIError:
    # Never echo the key back: it is a secret even when it is wrong.
    return OpenAIError(401, "Incorrect API key provided. You can find your API key at "
                            "https://platform.openai.com/account/api-keys.", code="invalid_api_key")


def unparsable_json() -> OpenAIError:
    return OpenAIError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                            "but what was sent was not valid JSON.)")


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}"


def injected_failure(status: int, model: str, retry_after: float | None) -> OpenAIError:
    """The error a real provider would send with this status (Behaviour.fail_status)."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = _seconds_text(retry_after)
    if status == 429:
        wait = _seconds_text(retry_after if retry_after is not None else 1.0)
        headers.update({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": f"{wait}s"})
        return OpenAIError(429, f"Rate limit reached for {model} in organization org-llmgw-demo on requests per "
                                f"min (RPM): Limit 60, Used 60, Requested 1. Please try again in {wait}s.",
                           type="requests", code="rate_limit_exceeded", headers=headers)
    if status >= 500:
        message = ("The engine is currently overloaded, please try again later." if status == 503 else
                   "The server had an error while processing your request. Sorry about that!")
        return OpenAIError(status, message, type="server_error", headers=headers)
    if status == 401:
        error = invalid_api_key()
        error.headers = headers
        return error
    if status == 404:
        error = model_not_found(model)
        error.headers = headers
        return error
    return OpenAIError(status, f"The demo provider was told to fail with HTTP {status}.", headers=headers)


def context_length_exceeded(window: int, prompt: int) -> OpenAIError:
    return OpenAIError(400, f"This model's maximum context length is {window} tokens. However, your messages "
                            f"resulted in {prompt} tokens. Please reduce the length of the messages.",
                       param="messages", code="context_length_exceeded")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(param: str, expected: str, value: Any) -> OpenAIError:
    return OpenAIError(400, f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
                       param=param, code="invalid_type")


def _missing(param: str) -> OpenAIError:
    return OpenAIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _int_param(body: dict[str, Any], name: str, minimum: int, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, "an integer", value)
    if value < minimum:
        raise OpenAIError(400, f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
                               f"but got {value} instead.", param=name, code="integer_below_min_value")
    if maximum is not None and value > maximum:
        raise OpenAIError(400, f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, "
                               f"but got {value} instead.", param=name, code="integer_above_max_value")
    return value


def _model_param(body: Any) -> str:
    if not isinstance(body, dict):
        raise _invalid_type("body", "an object", body)
    model = body.get("model")
    if model is None:
        raise OpenAIError(400, "you must provide a model parameter")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    return model


# ---------------------------------------------------------------- chat requests


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None
    stop: tuple[str, ...]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


def parse_chat_request(body: Any) -> ChatRequest:
    model = _model_param(body)
    messages = body.get("messages")
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise OpenAIError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                               "but got an empty array instead.", param="messages", code="empty_array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid_type(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"messages[{i}].role")
        if role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES)
            raise OpenAIError(400, f"Invalid value: '{role}'. Supported values are: {supported}.",
                              param=f"messages[{i}].role", code="invalid_value")

    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _invalid_type("stream", "a boolean", stream)
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not stream:
            raise OpenAIError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                              param="stream_options")
        if not isinstance(stream_options, dict):
            raise _invalid_type("stream_options", "an object", stream_options)

    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _invalid_type("stop", "a string or an array of up to 4 strings", stop)

    max_tokens = _int_param(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int_param(body, "max_tokens", 1)
    tools = body.get("tools")
    tool_choice = body.get("tool_choice")
    if tools is not None or tool_choice is not None:
        _check_tools(tools, tool_choice)
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=bool(stream_options and stream_options.get("include_usage")),
        n=_int_param(body, "n", 1, 128) or 1,
        max_tokens=max_tokens,
        stop=stops,
        tools=tools or None,
        tool_choice=tool_choice,
    )


def _check_tools(tools: Any, tool_choice: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid_type("tools", "an array", tools)
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _invalid_type(f"tools[{i}]", "an object", tool)
            if tool.get("type", "function") == "function":
                function = tool.get("function")
                if not isinstance(function, dict):
                    raise _missing(f"tools[{i}].function")
                if not isinstance(function.get("name"), str):
                    raise _missing(f"tools[{i}].function.name")
    if tool_choice is not None:
        if not tools:
            raise OpenAIError(400, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                                   "are specified.", param="tool_choice")
        if isinstance(tool_choice, str):
            if tool_choice not in ("none", "auto", "required"):
                raise OpenAIError(400, f"Invalid value: '{tool_choice}'. Supported values are: 'none', 'auto', "
                                       "and 'required'.", param="tool_choice", code="invalid_value")
        elif not isinstance(tool_choice, dict):
            raise _invalid_type("tool_choice", "a string or an object", tool_choice)


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: a string content, or the text parts of a multi-part content."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def image_count(message: dict[str, Any]) -> int:
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") in ("image_url", "input_image"))


count_tokens = replies.count_tokens


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return TOKENS_REPLY_PRIMING + sum(TOKENS_PER_MESSAGE + count_tokens(message_text(m)) for m in messages)


_cut_after_words = replies.cut_after_words


def default_reply(messages: list[dict[str, Any]]) -> str:
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if last_user is None:
        return "Echo: "
    content = last_user.get("content")
    if isinstance(content, str):  # the benchmark's case: keep it short
        return "Echo: " + _cut_after_words(content.strip(), ECHO_MAX_WORDS)
    return replies.echo(message_text(last_user), image_count(last_user))


def chat_turn(req: ChatRequest) -> replies.Turn:
    messages = req.messages
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    names = tuple(t["function"]["name"] for t in req.tools or () if t.get("type", "function") == "function")
    choice = req.tool_choice
    forced = None
    if isinstance(choice, dict):
        function = choice.get("function")
        forced = function.get("name") if isinstance(function, dict) else choice.get("name")
    last = messages[-1]
    return replies.Turn(
        user_text=message_text(last_user) if last_user else "",
        images=image_count(last_user) if last_user else 0,
        tool_result=message_text(last) if last.get("role") == "tool" else None,
        tools=names,
        forced_tool=forced if isinstance(forced, str) else None,
        tools_off=choice == "none",
    )


def apply_limits(reply: str, stop: tuple[str, ...], max_tokens: int | None) -> tuple[str, str]:
    """(content, finish_reason) after the stop sequences and the token limit."""
    cuts = [i for i in (reply.find(s) for s in stop if s) if i >= 0]
    if cuts:
        reply = reply[:min(cuts)]
    if max_tokens is not None and count_tokens(reply) > max_tokens:
        return _cut_after_words(reply, max_tokens), "length"
    return reply, "stop"


# Stream pieces of a few words each; joined they give back ``content`` exactly.
split_chunks = replies.split_words


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """OpenAI's usage: cached tokens are part of the prompt, reasoning tokens part of the completion."""
    completion += reasoning
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def tool_call_tokens(reply: replies.Reply) -> int:
    """What a tool call costs in completion tokens: its name plus its arguments' words."""
    return 1 + count_tokens(reply.arguments_json)


def tool_call(call_id: str, reply: replies.Reply) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": reply.tool_name, "arguments": reply.arguments_json}}


def chat_completion(completion_id: str, created: int, model: str, n: int, content: str | None,
                    finish_reason: str, usage_body: dict[str, Any],
                    tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i,
             "message": dict(message),
             "logprobs": None,
             "finish_reason": finish_reason}
            for i in range(n)
        ],
        "usage": usage_body,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def chat_chunk(completion_id: str, created: int, model: str, choices: list[dict[str, Any]],
               include_usage: bool, usage_body: dict[str, Any] | None = None) -> dict[str, Any]:
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
    }
    if include_usage:  # OpenAI puts "usage": null on every chunk but the last one
        chunk["usage"] = usage_body
    return chunk


def chunk_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def models_list(models: list[str]) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"id": m, "object": "model", "created": MODEL_CREATED, "owned_by": OWNED_BY} for m in models]}


# ---------------------------------------------------------------- embeddings


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str | list[int]]
    dimensions: int
    base64: bool


def parse_embedding_request(body: Any) -> EmbeddingRequest:
    model = _model_param(body)
    raw = body.get("input")
    if raw is None:
        raise _missing("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(
            isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, int) for t in x)) for x in raw):
        inputs = raw
    else:
        raise _invalid_type("input", "a string, an array of strings or an array of token arrays", raw)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise OpenAIError(400, f"Invalid value: '{encoding}'. Supported values are: 'float' and 'base64'.",
                          param="encoding_format", code="invalid_value")
    return EmbeddingRequest(model=model, inputs=inputs,
                            dimensions=_int_param(body, "dimensions", 1, 4096) or EMBEDDING_DIMENSIONS,
                            base64=encoding == "base64")


def embedding_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector derived from a hash of the input: same input, same vector."""
    seed = item.encode() if isinstance(item, str) else b",".join(str(t).encode() for t in item)
    raw = [b / 127.5 - 1.0 for b in hashlib.shake_256(seed).digest(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def embeddings_response(req: EmbeddingRequest) -> dict[str, Any]:
    data = []
    for i, item in enumerate(req.inputs):
        vector = embedding_vector(item, req.dimensions)
        encoded: Any = (base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                        if req.base64 else vector)
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(count_tokens(x) if isinstance(x, str) else len(x) for x in req.inputs)
    return {"object": "list", "data": data, "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
