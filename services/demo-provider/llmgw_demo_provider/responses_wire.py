"""The OpenAI Responses wire format (POST /v1/responses): requests, response objects, typed stream events.

Pure functions, no I/O. Errors are OpenAI's (``wire.OpenAIError``); shapes follow the
openai SDK's ``openai.types.responses`` models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import replies, wire
from .asgi import new_id

ROLES = ("user", "assistant", "system", "developer")
MIN_OUTPUT_TOKENS = 16
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
_TEXT_PARTS = ("input_text", "output_text", "text")


@dataclass(frozen=True)
class ResponsesRequest:
    model: str
    items: list[dict[str, Any]]  # the input as items (a string input is one user message)
    instructions: str | None
    tools: list[dict[str, Any]]
    tool_choice: Any
    max_output_tokens: int | None
    stream: bool
    body: dict[str, Any]


def parse_responses_request(body: Any) -> ResponsesRequest:
    model = wire._model_param(body)
    raw = body.get("input")
    if raw is None:
        raise wire._missing("input")
    if isinstance(raw, str):
        items = [{"role": "user", "content": raw}]
    elif isinstance(raw, list):
        items = raw
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise wire._invalid_type(f"input[{i}]", "an object", item)
            kind = item.get("type", "message")
            if kind == "message":
                role = item.get("role")
                if role not in ROLES:
                    supported = ", ".join(f"'{r}'" for r in ROLES)
                    raise wire.OpenAIError(400, f"Invalid value: '{role}'. Supported values are: {supported}.",
                                           param=f"input[{i}].role", code="invalid_value")
                if not isinstance(item.get("content"), (str, list)):
                    raise wire._missing(f"input[{i}].content")
            elif kind == "function_call_output" and "output" not in item:
                raise wire._missing(f"input[{i}].output")
    else:
        raise wire._invalid_type("input", "a string or an array", raw)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise wire._invalid_type("instructions", "a string", instructions)
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise wire._invalid_type("tools", "an array", tools)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise wire._invalid_type(f"tools[{i}]", "an object", tool)
        if tool.get("type") == "function" and not isinstance(tool.get("name"), str):
            raise wire._missing(f"tools[{i}].name")
    tool_choice = body.get("tool_choice")
    if isinstance(tool_choice, str) and tool_choice not in ("none", "auto", "required"):
        raise wire.OpenAIError(400, f"Invalid value: '{tool_choice}'. Supported values are: 'none', 'auto', and "
                                    "'required'.", param="tool_choice", code="invalid_value")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise wire._invalid_type("stream", "a boolean", stream)
    return ResponsesRequest(model=model, items=items, instructions=instructions, tools=tools,
                            tool_choice=tool_choice,
                            max_output_tokens=wire._int_param(body, "max_output_tokens", MIN_OUTPUT_TOKENS),
                            stream=stream, body=body)


def item_text(item: dict[str, Any]) -> str:
    if item.get("type") == "function_call_output":
        return replies.tool_result_text(item.get("output", ""))
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in _TEXT_PARTS)
    return ""


def prompt_tokens(req: ResponsesRequest) -> int:
    total = TOKENS_REPLY_PRIMING + sum(TOKENS_PER_MESSAGE + replies.count_tokens(item_text(i)) for i in req.items)
    if req.instructions:
        total += TOKENS_PER_MESSAGE + replies.count_tokens(req.instructions)
    return total


def turn(req: ResponsesRequest) -> replies.Turn:
    last = req.items[-1]
    user = next((i for i in reversed(req.items) if i.get("role") == "user"), None)
    images = 0
    if user is not None and isinstance(user.get("content"), list):
        images = sum(1 for p in user["content"] if isinstance(p, dict) and p.get("type") == "input_image")
    choice = req.tool_choice
    return replies.Turn(
        user_text=item_text(user) if user else "", images=images,
        tool_result=item_text(last) if last.get("type") == "function_call_output" else None,
        tools=tuple(t["name"] for t in req.tools if t.get("type") == "function"),
        forced_tool=choice.get("name") if isinstance(choice, dict) and choice.get("type") == "function" else None,
        tools_off=choice == "none")


@dataclass(frozen=True)
class Answer:
    item: dict[str, Any]  # the one output item: a message or a function_call
    incomplete: bool  # cut by max_output_tokens
    output_tokens: int


def answer(reply: replies.Reply, max_output_tokens: int | None) -> Answer:
    if reply.is_tool_call:
        item = {"id": new_id("fc_"), "type": "function_call", "status": "completed",
                "arguments": reply.arguments_json, "call_id": new_id("call_"), "name": reply.tool_name}
        return Answer(item, False, 1 + replies.count_tokens(reply.arguments_json))
    limited = replies.limit(reply.text or "", (), max_output_tokens)
    incomplete = limited.reason == "max_tokens"
    item = {"id": new_id("msg_"), "type": "message", "status": "incomplete" if incomplete else "completed",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": limited.text}],
            "role": "assistant"}
    return Answer(item, incomplete, replies.count_tokens(limited.text))


def usage(prompt: int, output: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """The Responses usage: cached tokens are part of the input, reasoning tokens part of the output."""
    output += reasoning
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + output}


def response_object(response_id: str, created: int, req: ResponsesRequest, output: list[dict[str, Any]],
                    status: str, usage_body: dict[str, Any] | None, completed_at: int | None = None) -> dict[str, Any]:
    body = req.body
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status,
        "background": False, "completed_at": completed_at, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "max_tool_calls": None,
        "model": req.model, "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"), "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None}, "safety_identifier": None, "service_tier": "default",
        "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto", "tools": req.tools,
        "top_logprobs": 0, "top_p": body.get("top_p", 1.0), "truncation": "disabled",
        "usage": usage_body, "user": None, "metadata": body.get("metadata") or {},
    }


@dataclass(frozen=True)
class Event:
    data: dict[str, Any]
    content: bool = False  # a text or arguments delta: what Behaviour.die_after_chunks counts

    @property
    def name(self) -> str:
        return self.data["type"]


def stream_events(response_id: str, created: int, req: ResponsesRequest, ans: Answer,
                  usage_body: dict[str, Any]) -> list[Event]:
    """The typed events of a streamed response, numbered by ``sequence_number`` from 0."""
    events: list[Event] = []

    def add(kind: str, content: bool = False, **fields: Any) -> None:
        events.append(Event({"type": kind, "sequence_number": len(events), **fields}, content))

    pending = response_object(response_id, created, req, [], "in_progress", None)
    add("response.created", response=pending)
    add("response.in_progress", response=pending)
    item = ans.item
    item_id = item["id"]
    if item["type"] == "message":
        part = item["content"][0]
        add("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "content": []})
        add("response.content_part.added", item_id=item_id, output_index=0, content_index=0,
            part={**part, "text": ""})
        for piece in replies.split_words(part["text"]):
            add("response.output_text.delta", True, item_id=item_id, output_index=0, content_index=0,
                delta=piece, logprobs=[])
        add("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=part["text"],
            logprobs=[])
        add("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=part)
    else:
        add("response.output_item.added", output_index=0, item={**item, "status": "in_progress", "arguments": ""})
        for piece in replies.split_fragments(item["arguments"]):
            add("response.function_call_arguments.delta", True, item_id=item_id, output_index=0, delta=piece)
        add("response.function_call_arguments.done", item_id=item_id, output_index=0, arguments=item["arguments"])
    add("response.output_item.done", output_index=0, item=item)
    status = "incomplete" if ans.incomplete else "completed"
    final = response_object(response_id, created, req, [item], status, usage_body,
                            None if ans.incomplete else created)
    add(f"response.{status}", response=final)
    return events
