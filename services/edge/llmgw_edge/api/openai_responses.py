"""OpenAI Responses in and out: ``POST /v1/responses``, any provider behind it.

Upstreams that serve ``/responses`` themselves (OpenAI; an ``openai`` provider
with ``responses_api: true``) get the client's body as it is and their answer
comes back byte for byte. Every other provider gets the core request built
from it (``input`` items -> messages, function tools, ``text.format``,
``reasoning.effort``...), and its answer is rendered as a Responses object or
as the typed stream events (``response.created`` ... ``response.completed``
with a monotonically increasing ``sequence_number``). What only OpenAI can do
(built-in tools such as ``web_search`` or ``file_search``, ``file_id`` images,
files, ``prompt`` templates, hosted-tool items) cannot be translated: the
attempt fails as ``UNSUPPORTED`` and the gateway fails over to an upstream
that serves ``/responses`` natively.

**No conversation state.** The gateway stores nothing and keeps nothing
between requests: each request must carry its whole input.

- ``previous_response_id``, ``conversation`` and ``background: true`` are
  refused with a 400 naming the parameter (``item_reference`` input items
  too): the gateway has no stored responses to continue, poll or look up.
  This holds even when the request would pass through to an upstream that
  serves ``/responses`` natively: that upstream's stored state belongs to
  that one provider, and the next request (or a fail-over) may be served by
  another one, where the reference would break.
- ``store`` is accepted and forwarded as it is to native upstreams; the
  gateway itself stores nothing, and translated answers say ``store: false``.
- Reasoning from a translated provider comes back as a ``reasoning`` item
  (its text as a summary). An Anthropic thinking signature travels in the
  item's ``encrypted_content`` (prefixed ``llmgw:``) so a client that sends
  the item back keeps multi-turn thinking working; such items are dropped
  from bodies passed through to native upstreams, which could not read them,
  and so are the ids of items we rendered (``msg_llmgw...``, ``fc_llmgw...``:
  OpenAI refuses input item ids it never stored). OpenAI's own reasoning
  items mean nothing to other providers and are not translated.

Errors are OpenAI's ``{"error": {...}}``. A translated stream that breaks
after it started ends with ``response.failed`` (the same response id, the
output so far); a relayed native stream, whose ids the codec never saw, ends
with an ``error`` event.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

from llmgw_common.failures import FailureKind

from ..core.errors import GatewayError, UpstreamError, bad_request
from ..core.gateway import Exchange
from ..core.provider import RawCall
from ..core.tokens import PromptTokens, estimate_chat_tokens
from ..core.types import (ChatRequest, ChatResponse, EmbeddingResponse, Finish, Message, Start, StreamEvent, Text,
                          TextDelta, Thinking, ThinkingDelta, ToolCall, ToolCallDelta, ToolCallStart, ToolChoice,
                          ToolResult, ToolSpec, Usage, UsageUpdate)
from .body import json_object
from .openai_chat import error_body, image_from_url

_ROLES = {"user", "assistant", "system", "developer"}
_TEXT_PARTS = {"input_text", "output_text"}
# reasoning we produced from another provider's thinking: "llmgw:sig:<signature>" / "llmgw:redacted:<data>"
_MARK = "llmgw:"
_OURS = "llmgw"  # in the ids we mint, after the prefix
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_STATELESS = ("The gateway is stateless: it stores no responses or conversations, so `{param}` cannot be used. "
              "Send the whole conversation in `input` instead. (Even for upstreams that serve /responses "
              "themselves: their stored state belongs to one provider, and fail-over to another would break it.)")


def _new_id(prefix: str) -> str:
    """An id of ours: ``llmgw`` cannot occur in OpenAI's (hex) ids, so ours are told apart when sent back."""
    return f"{prefix}_{_OURS}{secrets.token_hex(20)}"


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: ".encode() + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


@dataclass
class _Stream:
    """What a rendered stream has said so far (kept on the codec so ``stream_error`` can end it)."""

    id: str
    model: str
    created: int
    seq: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    open: int | None = None  # output index of the item still receiving deltas
    calls: dict[int, int] = field(default_factory=dict)  # core tool call index -> output index
    usage: Usage = field(default_factory=Usage)
    finish: Finish | None = None
    ended: bool = False  # a terminal event (completed / incomplete / failed) went out

    def event(self, type_: str, **fields: Any) -> bytes:
        body = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return _sse(body)


class ResponsesCodec:
    format = "openai_responses"
    error_format = "openai"
    endpoint = "responses"
    render_error = staticmethod(error_body)

    def __init__(self, max_depth: int = 100) -> None:
        self.max_depth = max_depth
        self._echo: dict[str, Any] = _echo({})
        self._stream: _Stream | None = None

    # ---- parse --------------------------------------------------------------

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> Exchange:
        body = json_object(raw, self.max_depth)
        _validate(body)
        req, problem = _convert(body)
        self._echo = _echo(body)

        def build_chat() -> ChatRequest:
            if problem:
                raise UpstreamError(400, problem, kind=FailureKind.UNSUPPORTED)
            return req

        native = _native_body(body)
        return Exchange(
            model=body["model"], stream=req.stream, max_tokens=req.max_tokens, headers=headers,
            raw=RawCall("openai_responses", native, raw, raw_is_body=native is body, stream=req.stream,
                        headers=headers),
            build_chat=build_chat, count_prompt=PromptTokens(lambda exact: estimate_chat_tokens(req, exact)),
            prompt_text=req.last_user_text())

    # ---- render -------------------------------------------------------------

    def render_response(self, resp: ChatResponse) -> bytes:
        incomplete = _INCOMPLETE.get(resp.finish_reason)
        output: list[dict[str, Any]] = []
        text: list[str] = []

        def flush_text() -> None:
            if text:
                output.append(_message(_new_id("msg"), "".join(text), "incomplete" if incomplete else "completed"))
                text.clear()

        for p in resp.parts:
            if isinstance(p, Thinking):
                flush_text()
                output.append(_reasoning(_new_id("rs"), p.text, p.signature, p.redacted))
            elif isinstance(p, Text) and p.text:
                text.append(p.text)
        if not text and not resp.tool_calls and not any(o["type"] == "message" for o in output):
            text.append("")  # always one message, so `output_text` has something to read
        flush_text()
        for c in resp.tool_calls:
            output.append(_function_call(_new_id("fc"), c.id or _new_id("call"), c.name, c.arguments or "{}",
                                         "completed"))
        created = resp.created or int(time.time())
        body = self._response(_new_id("resp"), resp.model, created, "incomplete" if incomplete else "completed",
                              output, resp.usage, incomplete)
        return json.dumps(body, ensure_ascii=False).encode()

    async def render_stream(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
        st: _Stream | None = None

        def begin(model: str = "", created: int = 0) -> list[bytes]:
            nonlocal st
            st = self._stream = _Stream(_new_id("resp"), model or self._echo["model"], created or int(time.time()))
            shell = self._response(st.id, st.model, st.created, "in_progress", [], None, None)
            return [st.event("response.created", response=shell), st.event("response.in_progress", response=shell)]

        async for event in events:
            if st is None:
                if isinstance(event, Start):
                    for piece in begin(event.model, event.created):
                        yield piece
                    continue
                for piece in begin():
                    yield piece
            assert st is not None
            if isinstance(event, TextDelta):
                if not event.text:
                    continue
                item = st.output[st.open] if st.open is not None else None
                if item is None or item["type"] != "message":
                    for piece in self._close(st):
                        yield piece
                    yield self._add(st, _message(_new_id("msg"), None, "in_progress"))
                    item = st.output[st.open]  # type: ignore[index]
                    part = item["content"][0]
                    yield st.event("response.content_part.added", item_id=item["id"], output_index=st.open,
                                   content_index=0, part={**part, "text": ""})
                item["content"][0]["text"] += event.text
                yield st.event("response.output_text.delta", item_id=item["id"], output_index=st.open,
                               content_index=0, delta=event.text, logprobs=[])
            elif isinstance(event, ThinkingDelta):
                if not event.text and not event.signature and event.redacted is None:
                    continue
                item = st.output[st.open] if st.open is not None else None
                if event.redacted is not None:
                    for piece in self._close(st):
                        yield piece
                    yield self._add(st, _reasoning(_new_id("rs"), "", None, event.redacted))
                    for piece in self._close(st):
                        yield piece
                    continue
                if item is None or item["type"] != "reasoning" or (event.text and item.get("encrypted_content")):
                    for piece in self._close(st):
                        yield piece  # a new thinking block once the previous one was signed
                    yield self._add(st, _reasoning(_new_id("rs"), "", None, None))
                    item = st.output[st.open]  # type: ignore[index]
                if event.text:
                    if not item["summary"]:
                        item["summary"].append({"type": "summary_text", "text": ""})
                        yield st.event("response.reasoning_summary_part.added", item_id=item["id"],
                                       output_index=st.open, summary_index=0,
                                       part={"type": "summary_text", "text": ""})
                    item["summary"][0]["text"] += event.text
                    yield st.event("response.reasoning_summary_text.delta", item_id=item["id"],
                                   output_index=st.open, summary_index=0, delta=event.text)
                if event.signature:
                    item["encrypted_content"] = _MARK + "sig:" + event.signature
            elif isinstance(event, ToolCallStart):
                for piece in self._close(st):
                    yield piece
                yield self._add(st, _function_call(_new_id("fc"), event.id or _new_id("call"), event.name, "",
                                                   "in_progress"))
                st.calls[event.index] = st.open  # type: ignore[assignment]
            elif isinstance(event, ToolCallDelta):
                index = st.calls.get(event.index)
                if index is None or not event.arguments:
                    continue
                item = st.output[index]
                item["arguments"] += event.arguments
                if index == st.open:
                    yield st.event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=index, delta=event.arguments)
                # a late fragment of a call already closed (no provider does this) still lands in the final output
            elif isinstance(event, Finish):
                st.finish = event
            elif isinstance(event, UsageUpdate):
                st.usage.merge(event.usage)
        if st is None or st.finish is None:
            return  # ended without a finish: the gateway follows with ``stream_error`` (response.failed)
        incomplete = _INCOMPLETE.get(st.finish.reason)
        for piece in self._close(st, "incomplete" if incomplete else "completed"):
            yield piece
        st.ended = True
        final = self._response(st.id, st.model, st.created, "incomplete" if incomplete else "completed",
                               st.output, st.usage, incomplete)
        yield st.event("response.incomplete" if incomplete else "response.completed", response=final)

    def render_embeddings(self, resp: EmbeddingResponse) -> bytes:  # pragma: no cover - not an embeddings route
        raise NotImplementedError

    def stream_error(self, err: GatewayError) -> bytes:
        st = self._stream
        if st is None or st.ended:
            # a relayed native stream (its ids and sequence are the upstream's) or one already ended
            seq = st.seq if st is not None else 0
            return _sse({"type": "error", "sequence_number": seq, "code": err.code or "server_error",
                         "message": err.message, "param": None})
        for item in st.output:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        st.ended = True
        failed = self._response(st.id, st.model, st.created, "failed", st.output, st.usage, None,
                                error={"code": "server_error", "message": err.message})
        return st.event("response.failed", response=failed)

    # ---- helpers ------------------------------------------------------------

    def _add(self, st: _Stream, item: dict[str, Any]) -> bytes:
        st.output.append(item)
        st.open = len(st.output) - 1
        added = copy.deepcopy(item)
        if added["type"] == "message":
            added["content"] = []
        return st.event("response.output_item.added", output_index=st.open, item=added)

    def _close(self, st: _Stream, status: str = "completed") -> list[bytes]:
        """The done events of the open item (the item keeps its place in ``output``)."""
        index = st.open
        if index is None:
            return []
        st.open = None
        item = st.output[index]
        out: list[bytes] = []
        if item["type"] == "message":
            part = item["content"][0]
            out.append(st.event("response.output_text.done", item_id=item["id"], output_index=index,
                                content_index=0, text=part["text"], logprobs=[]))
            out.append(st.event("response.content_part.done", item_id=item["id"], output_index=index,
                                content_index=0, part=part))
        elif item["type"] == "function_call":
            if not item["arguments"]:
                item["arguments"] = "{}"
            out.append(st.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                name=item["name"], arguments=item["arguments"]))
        elif item["type"] == "reasoning" and item["summary"]:
            part = item["summary"][0]
            out.append(st.event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                                summary_index=0, text=part["text"]))
            out.append(st.event("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                                summary_index=0, part=part))
        item["status"] = status if item["type"] == "message" else "completed"
        out.append(st.event("response.output_item.done", output_index=index, item=item))
        return out

    def _response(self, rid: str, model: str, created: int, status: str, output: list[dict[str, Any]],
                  usage: Usage | None, incomplete: str | None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        echo = self._echo
        return {
            "id": rid, "object": "response", "created_at": created, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": False, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": echo["instructions"], "max_output_tokens": echo["max_output_tokens"],
            "max_tool_calls": None, "model": model or echo["model"], "output": output,
            "parallel_tool_calls": echo["parallel_tool_calls"], "previous_response_id": None,
            "reasoning": echo["reasoning"], "store": False, "temperature": echo["temperature"],
            "text": echo["text"], "tool_choice": echo["tool_choice"], "tools": echo["tools"],
            "top_p": echo["top_p"], "truncation": echo["truncation"], "usage": usage_body(usage) if usage else None,
            "user": echo["user"], "metadata": echo["metadata"]}


# ---- output items -------------------------------------------------------------

def _message(mid: str, text: str | None, status: str) -> dict[str, Any]:
    return {"type": "message", "id": mid, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text or "", "annotations": [], "logprobs": []}]}


def _function_call(fid: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": fid, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def _reasoning(rid: str, text: str, signature: str | None, redacted: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "reasoning", "id": rid,
                            "summary": [{"type": "summary_text", "text": text}] if text else []}
    if redacted is not None:
        item["encrypted_content"] = _MARK + "redacted:" + redacted
    elif signature:
        item["encrypted_content"] = _MARK + "sig:" + signature
    return item


def usage_body(usage: Usage) -> dict[str, Any]:
    """The Responses usage (the same convention as core: input includes cached, output includes reasoning)."""
    return {"input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.cache_read_tokens,
                                     "cache_write_tokens": usage.cache_write_tokens},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.input_tokens + usage.output_tokens}


# ---- validation (400s, whatever the upstream) ------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("you must provide a model parameter", param="model")
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise bad_request(_STATELESS.format(param=name), param=name, code="unsupported_parameter")
    if body.get("background") is True:
        raise bad_request("The gateway is stateless: background responses (polled later by id) are not "
                          "supported. Send the request without `background` (stream it if it is long).",
                          param="background", code="unsupported_parameter")
    for name in ("stream", "parallel_tool_calls", "background", "store"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise bad_request(f"'{name}' must be a boolean", param=name)
    for name in ("instructions", "user", "safety_identifier"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad_request(f"'{name}' must be a string", param=name)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None and not _is_number(body[name]):
            raise bad_request(f"'{name}' must be a number", param=name)
    limit = body.get("max_output_tokens")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise bad_request("'max_output_tokens' must be a positive integer", param="max_output_tokens")
    for name in ("reasoning", "text", "metadata", "prompt"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise bad_request(f"'{name}' must be an object", param=name)
    _validate_input(body)
    _validate_tools(body)
    fmt = (body.get("text") or {}).get("format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise bad_request("'text.format.type' must be one of 'text', 'json_object', 'json_schema'",
                              param="text.format")
        if fmt["type"] == "json_schema" and (not isinstance(fmt.get("name"), str)
                                             or not isinstance(fmt.get("schema"), dict)):
            raise bad_request("'text.format' of type 'json_schema' needs a 'name' and a 'schema' object",
                              param="text.format")


def _validate_input(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None and body.get("prompt") is not None:
        return  # a stored prompt template supplies the input (native upstreams only)
    if isinstance(value, str):
        if not value:
            raise bad_request("'input' must not be empty", param="input")
        return
    if not isinstance(value, list) or not value:
        raise bad_request("'input' must be a non-empty string or a non-empty array of input items", param="input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object", param=where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind is None:
            raise bad_request(f"{where}.type: missing (or a message without 'role')", param=f"{where}.type")
        if not isinstance(kind, str):
            raise bad_request(f"{where}.type must be a string", param=f"{where}.type")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in _ROLES:  # an object is unhashable: test its type first
                raise bad_request(f"{where}.role must be one of {sorted(_ROLES)}, got "
                                  f"{repr(role)[:40] if isinstance(role, str) else type(role).__name__}",
                                  param=f"{where}.role")
            _validate_content(item.get("content"), f"{where}.content", allow_string=True)
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise bad_request(f"{where}.{name} must be a string", param=f"{where}.{name}")
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise bad_request(f"{where}.call_id must be a string", param=f"{where}.call_id")
            _validate_content(item.get("output"), f"{where}.output", allow_string=True)
        elif kind == "item_reference":
            raise bad_request(_STATELESS.format(param="item_reference") + " Send the item itself.",
                              param=where, code="unsupported_parameter")
        elif kind == "reasoning":
            if not isinstance(item.get("summary", []), list):
                raise bad_request(f"{where}.summary must be an array", param=f"{where}.summary")


def _validate_content(content: Any, where: str, allow_string: bool) -> None:
    if isinstance(content, str) and allow_string:
        return
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or an array of content parts", param=where)
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"{where}[{j}] must be an object with a 'type'", param=f"{where}[{j}]")
        if part["type"] in _TEXT_PARTS and not isinstance(part.get("text"), str):
            raise bad_request(f"{where}[{j}].text must be a string", param=f"{where}[{j}].text")
        if part["type"] == "input_image" and not isinstance(part.get("image_url"), str) \
                and not isinstance(part.get("file_id"), str):
            raise bad_request(f"{where}[{j}] needs an 'image_url' or a 'file_id'", param=f"{where}[{j}]")


def _validate_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_request("'tools' must be an array", param="tools")
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("type"), str):
                raise bad_request(f"tools[{i}] must be an object with a 'type'", param=f"tools[{i}]")
            if t["type"] == "function":
                if not isinstance(t.get("name"), str) or not t["name"]:
                    raise bad_request(f"tools[{i}].name must be a non-empty string", param=f"tools[{i}].name")
                if t.get("parameters") is not None and not isinstance(t["parameters"], dict):
                    raise bad_request(f"tools[{i}].parameters must be an object", param=f"tools[{i}].parameters")
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none", "required") and not (
            isinstance(choice, dict) and isinstance(choice.get("type"), str)):
        raise bad_request("'tool_choice' must be 'auto', 'none', 'required' or an object with a 'type'",
                          param="tool_choice")
    if isinstance(choice, dict) and choice["type"] == "function" and not isinstance(choice.get("name"), str):
        raise bad_request("'tool_choice.name' must be a string", param="tool_choice.name")


# ---- Responses -> core -------------------------------------------------------------

def _convert(body: dict[str, Any]) -> tuple[ChatRequest, str | None]:
    """The core request, and why it cannot be translated (None: it can). Runs on a validated body."""
    problems: list[str] = []
    messages: list[Message] = []
    if body.get("prompt") is not None:
        problems.append("`prompt` (a stored prompt template) is served by OpenAI only")
    if body.get("instructions"):
        messages.append(Message("system", [Text(body["instructions"])]))
    value = body.get("input")
    items = [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value or []
    names: dict[str, str] = {}  # call id -> function name (Gemini wants it with the result)

    def assistant() -> Message:
        """The assistant turn items join: the last message when it is the assistant's, else a new one."""
        if not messages or messages[-1].role != "assistant":
            messages.append(Message("assistant"))
        return messages[-1]

    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item["role"]
            parts = _parts(item["content"], f"input[{i}]", problems)
            if role in ("system", "developer"):
                messages.append(Message("system", parts))
            elif role == "user":
                messages.append(Message("user", parts))
            else:
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant" and not last.tool_calls and not last.text():
                    last.parts.extend(parts)  # the answer after its own reasoning
                else:
                    messages.append(Message("assistant", parts))
        elif kind == "function_call":
            names[item["call_id"]] = item["name"]
            assistant().tool_calls.append(ToolCall(item["call_id"], item["name"], item["arguments"] or "{}"))
        elif kind == "function_call_output":
            result = ToolResult(item["call_id"], _parts(item["output"], f"input[{i}].output", problems),
                                name=names.get(item["call_id"]))
            if messages and messages[-1].role == "tool":
                messages[-1].parts.append(result)
            else:
                messages.append(Message("tool", [result]))
        elif kind == "reasoning":
            thinking = _thinking(item)
            if thinking is not None:
                last = messages[-1] if messages else None
                if last is not None and last.role == "assistant" and not last.tool_calls and not last.text():
                    last.parts.append(thinking)
                else:
                    messages.append(Message("assistant", [thinking]))
            # OpenAI's own reasoning (encrypted for OpenAI) means nothing to another provider: skipped
        else:
            problems.append(f"input[{i}]: items of type {kind!r} are served by OpenAI only")
    tools: list[ToolSpec] = []
    for t in body.get("tools") or []:
        if t["type"] == "function":
            tools.append(ToolSpec(t["name"], t.get("description"),
                                  t.get("parameters") or {"type": "object", "properties": {}}))
        else:
            problems.append(f"tool type {t['type']!r} is served by OpenAI only")
    choice, tools = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), tools, problems)
    reasoning = body.get("reasoning") or {}
    user = body.get("user") or body.get("safety_identifier")
    req = ChatRequest(
        model=body["model"], messages=messages, stream=body.get("stream") is True,
        max_tokens=body.get("max_output_tokens"),
        temperature=float(body["temperature"]) if body.get("temperature") is not None else None,
        top_p=float(body["top_p"]) if body.get("top_p") is not None else None,
        tools=tools, tool_choice=choice, response_format=_response_format((body.get("text") or {}).get("format")),
        reasoning_effort=reasoning.get("effort") if isinstance(reasoning.get("effort"), str) else None,
        user=user,
        prompt_cache_key=body.get("prompt_cache_key") if isinstance(body.get("prompt_cache_key"), str) else None)
    return req, problems[0] if problems else None


def _parts(content: Any, where: str, problems: list[str]) -> list:
    if isinstance(content, str):
        return [Text(content)] if content else []
    parts: list = []
    for j, p in enumerate(content):
        kind = p["type"]
        if kind in _TEXT_PARTS:
            parts.append(Text(p["text"]))
        elif kind == "refusal" and isinstance(p.get("refusal"), str):
            parts.append(Text(p["refusal"]))
        elif kind == "input_image" and isinstance(p.get("image_url"), str):
            parts.append(image_from_url(p["image_url"], p.get("detail") if isinstance(p.get("detail"), str)
                                        else None))
        elif kind == "input_image":
            problems.append(f"{where}[{j}]: images by `file_id` are served by OpenAI only")
        else:
            problems.append(f"{where}[{j}]: content of type {kind!r} is served by OpenAI only")
    return parts


def _thinking(item: dict[str, Any]) -> Thinking | None:
    """Our own reasoning items come back as the thinking they carried; others are None."""
    sealed = item.get("encrypted_content")
    if not isinstance(sealed, str) or not sealed.startswith(_MARK):
        return None
    kind, _, data = sealed[len(_MARK):].partition(":")
    if kind == "redacted":
        return Thinking(redacted=data)
    text = "".join(s.get("text", "") for s in item.get("summary") or [] if isinstance(s, dict)
                   and isinstance(s.get("text"), str))
    return Thinking(text=text, signature=data or None) if kind == "sig" else None


def _native_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body for upstreams that serve /responses: as sent, minus what only we can read.

    Items a translated turn produced come back with ids OpenAI never stored (it refuses those with a 400)
    and reasoning sealed by another provider: such ids are dropped, such reasoning items too.
    """
    items = body.get("input")
    if not isinstance(items, list) or not any(_ours(i) for i in items):
        return body
    native = []
    for item in items:
        if not _ours(item):
            native.append(item)
        elif item.get("type") != "reasoning":
            native.append({k: v for k, v in item.items() if k != "id"})
    return {**body, "input": native}


def _ours(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    item_id, sealed = item.get("id"), item.get("encrypted_content")
    return (isinstance(item_id, str) and item_id.partition("_")[2].startswith(_OURS)) \
        or (item.get("type") == "reasoning" and isinstance(sealed, str) and sealed.startswith(_MARK))


def _tool_choice(choice: Any, parallel: Any, tools: list[ToolSpec],
                 problems: list[str]) -> tuple[ToolChoice | None, list[ToolSpec]]:
    par = parallel if isinstance(parallel, bool) else None
    if choice is None:
        return (ToolChoice("auto", parallel=par) if par is not None else None), tools
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice, parallel=par), tools
    kind = choice["type"]
    if kind == "function":
        return ToolChoice("tool", name=choice["name"], parallel=par), tools
    if kind == "allowed_tools":
        allowed = [t for t in choice.get("tools") or [] if isinstance(t, dict)]
        if any(t.get("type") != "function" for t in allowed):
            problems.append("`tool_choice.tools` names tools served by OpenAI only")
        names = {t.get("name") for t in allowed}
        mode = "required" if choice.get("mode") == "required" else "auto"
        return ToolChoice(mode, parallel=par), [t for t in tools if t.name in names]
    problems.append(f"tool_choice of type {kind!r} is served by OpenAI only")
    return ToolChoice("auto", parallel=par), tools


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if not isinstance(fmt, dict) or fmt.get("type") == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt["name"], "schema": fmt["schema"]}
    for name in ("strict", "description"):
        if fmt.get(name) is not None:
            schema[name] = fmt[name]
    return {"type": "json_schema", "json_schema": schema}


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """The request fields a Responses object repeats (with OpenAI's defaults when not sent)."""
    tools = []
    for t in body.get("tools") or []:
        if isinstance(t, dict) and t.get("type") == "function":
            tools.append({"type": "function", "name": t.get("name"), "description": t.get("description"),
                          "parameters": t.get("parameters"), "strict": t.get("strict", True)})
        elif isinstance(t, dict):
            tools.append(t)
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    choice = body.get("tool_choice")
    return {
        "model": body.get("model") or "", "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": body.get("parallel_tool_calls") if isinstance(body.get("parallel_tool_calls"),
                                                                              bool) else True,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "temperature": body.get("temperature") if body.get("temperature") is not None else 1.0,
        "top_p": body.get("top_p") if body.get("top_p") is not None else 1.0,
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": choice if choice is not None else "auto", "tools": tools,
        "truncation": body.get("truncation") if body.get("truncation") in ("auto", "disabled") else "disabled",
        "user": body.get("user"), "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {}}
