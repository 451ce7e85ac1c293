"""The Gemini API (generativelanguage v1beta) wire format: requests, responses, stream chunks, errors.

Pure functions, no I/O. Shapes follow generativelanguage.googleapis.com: camelCase JSON
(snake_case is accepted in requests, as the real API does), errors as
``{"error": {"code", "message", "status", "details"}}``, streamed chunks as full
``GenerateContentResponse`` objects whose ``usageMetadata`` is cumulative.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import replies

API_VERSION = "v1beta"
ROLES = ("user", "model", "function")
FUNCTION_MODES = ("AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED")
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
GENERATION_METHODS = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]

STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
            501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


class GeminiError(Exception):
    """An error answer: HTTP status plus Google's {"error": {"code", "message", "status"}} body."""

    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.status, "message": self.message,
                                 "status": STATUSES.get(self.status, "UNKNOWN")}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def _invalid(message: str) -> GeminiError:
    return GeminiError(400, message)


def _field(where: str, message: str) -> GeminiError:
    return _invalid(f"* GenerateContentRequest.{where}: {message}\n")


# ---------------------------------------------------------------- errors


def missing_api_key() -> GeminiError:
    return GeminiError(403, "Method doesn't allow unregistered callers (callers without established identity). "
                            "Please use API Key or other form of API consumer identity to call this API.")


def invalid_api_key() -> GeminiError:
    message = "API key not valid. Please pass a valid API key."  # never echo the key back
    return GeminiError(400, message, details=[
        {"@type": _ERROR_INFO, "reason": "API_KEY_INVALID", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message}])


def unparsable_json() -> GeminiError:
    return _invalid("Invalid JSON payload received. Unexpected token.")


def model_not_found(model: str, method: str = "generateContent") -> GeminiError:
    return GeminiError(404, f"models/{model} is not found for API version {API_VERSION}, or is not supported "
                            f"for {method}. Call ListModels to see the list of available models and their "
                            "supported methods.")


def unknown_method(method: str) -> GeminiError:
    return GeminiError(404, f"Method not found: {method}")


def _seconds(value: float) -> str:
    return f"{value:g}s"


def injected_failure(status: int, model: str, retry_after: float | None) -> GeminiError:
    """The error the Gemini API sends with this status (Behaviour.fail_status)."""
    if status == 429:
        wait = retry_after if retry_after is not None else 1.0
        return GeminiError(429, "You exceeded your current quota, please check your plan and billing details. "
                                "For more information on this error, head to: "
                                "https://ai.google.dev/gemini-api/docs/rate-limits.", details=[
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                 "quotaDimensions": {"location": "global", "model": model}, "quotaValue": "60"}]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                {"description": "Learn more about Gemini API quotas",
                 "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": _seconds(wait)}])
    if status == 400:
        return _invalid("Request contains an invalid argument.")
    if status == 401:
        return GeminiError(401, "Request had invalid authentication credentials.")
    if status == 403:
        return GeminiError(403, "The caller does not have permission")
    if status == 404:
        return model_not_found(model)
    if status == 503:
        return GeminiError(503, "The model is overloaded. Please try again later.")
    if status == 504:
        return GeminiError(504, "The request timed out. Please try again.")
    if status >= 500:
        return GeminiError(status, "An internal error has occurred. Please retry or report in "
                                   "https://developers.generativeai.google/guide/troubleshooting")
    return GeminiError(status, f"The demo provider was told to fail with HTTP {status}.")


# ---------------------------------------------------------------- requests


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    contents: list[dict[str, Any]]
    system: dict[str, Any] | None
    tools: tuple[str, ...]
    mode: str | None  # toolConfig.functionCallingConfig.mode
    allowed: tuple[str, ...]  # ... and its allowedFunctionNames
    max_tokens: int | None
    stop_sequences: tuple[str, ...]
    json_output: bool  # responseMimeType "application/json"
    include_thoughts: bool


_PART_KINDS = (("text", "text"), ("inlineData", "inline_data"), ("fileData", "file_data"),
               ("functionCall", "function_call"), ("functionResponse", "function_response"),
               ("executableCode", "executable_code"), ("codeExecutionResult", "code_execution_result"))


def _check_content(content: Any, where: str, system: bool = False) -> None:
    if not isinstance(content, dict):
        raise _field(where, "Invalid value (object expected).")
    role = content.get("role")
    if not system and role not in (None, "", *ROLES):
        raise _invalid("Please use a valid role: user, model.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _field(f"{where}.parts", "contents.parts must not be empty.")
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or not any(_get(part, c, s) is not None for c, s in _PART_KINDS):
            raise _field(f"{where}.parts[{i}].data", "required oneof field 'data' must have one initialized field")
        inline = _get(part, "inlineData", "inline_data")
        if inline is not None and (not isinstance(inline, dict) or not _get(inline, "mimeType", "mime_type")):
            raise _field(f"{where}.parts[{i}].inline_data.mime_type", "mime_type must be specified.")
        call = _get(part, "functionCall", "function_call")
        if call is not None and (not isinstance(call, dict) or not call.get("name")):
            raise _field(f"{where}.parts[{i}].function_call.name", "Name cannot be empty.")
        response = _get(part, "functionResponse", "function_response")
        if response is not None and (not isinstance(response, dict) or not response.get("name")):
            raise _field(f"{where}.parts[{i}].function_response.name", "Name cannot be empty.")


def _int(config: dict[str, Any], camel: str, snake: str, where: str) -> int | None:
    value = _get(config, camel, snake)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"Invalid value at '{where}' (TYPE_INT32), {json.dumps(value)}")
    return value


def parse_generate_request(model: str, body: Any) -> GenerateRequest:
    if not isinstance(body, dict):
        raise _invalid("Invalid JSON payload received. Expected an object.")
    contents = body.get("contents")
    if not contents:
        raise _field("contents", "contents is not specified")
    if not isinstance(contents, list):
        raise _invalid("Invalid JSON payload received. Unknown name \"contents\": Proto field is not repeating, "
                       "cannot start list.")
    for i, content in enumerate(contents):
        _check_content(content, f"contents[{i}]")
    system = _get(body, "systemInstruction", "system_instruction")
    if system is not None:
        _check_content(system, "system_instruction", system=True)

    names: list[str] = []
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _invalid("Invalid JSON payload received. Unknown name \"tools\": Proto field is not repeating, "
                       "cannot start list.")
    for i, tool in enumerate(tools):
        declarations = _get(tool, "functionDeclarations", "function_declarations") if isinstance(tool, dict) else None
        for j, declaration in enumerate(declarations or []):
            if not isinstance(declaration, dict) or not declaration.get("name"):
                raise _field(f"tools[{i}].function_declarations[{j}].name", "Name cannot be empty.")
            names.append(declaration["name"])
    tool_config = _get(body, "toolConfig", "tool_config") or {}
    calling = _get(tool_config, "functionCallingConfig", "function_calling_config") or {}
    mode = calling.get("mode")
    if mode is not None and mode not in FUNCTION_MODES:
        raise _invalid(f"Invalid value at 'tool_config.function_calling_config.mode' "
                       f"(type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), "
                       f"\"{mode}\"")
    allowed = _get(calling, "allowedFunctionNames", "allowed_function_names") or []

    config = _get(body, "generationConfig", "generation_config") or {}
    if not isinstance(config, dict):
        raise _invalid("Invalid JSON payload received. Unknown name \"generationConfig\": Expected an object.")
    max_tokens = _int(config, "maxOutputTokens", "max_output_tokens", "generation_config.max_output_tokens")
    if max_tokens is not None and max_tokens < 1:
        max_tokens = None  # the API treats 0 as "unset"
    stops = _get(config, "stopSequences", "stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _invalid("Invalid value at 'generation_config.stop_sequences' (TYPE_STRING)")
    if len(stops) > 5:
        raise _invalid("The number of stop sequences must be at most 5.")
    thinking = _get(config, "thinkingConfig", "thinking_config") or {}
    return GenerateRequest(
        model=model, contents=contents, system=system, tools=tuple(names), mode=mode, allowed=tuple(allowed),
        max_tokens=max_tokens, stop_sequences=tuple(stops),
        json_output=_get(config, "responseMimeType", "response_mime_type") == "application/json",
        include_thoughts=bool(_get(thinking, "includeThoughts", "include_thoughts")))


def count_request(model: str, body: Any) -> GenerateRequest:
    """A countTokens body: ``contents`` or a whole ``generateContentRequest``."""
    if isinstance(body, dict):
        inner = _get(body, "generateContentRequest", "generate_content_request")
        if isinstance(inner, dict):
            return parse_generate_request(model, inner)
    return parse_generate_request(model, body)


# ---------------------------------------------------------------- the reply


def _parts_text(parts: list[dict[str, Any]], with_results: bool = True) -> str:
    texts = []
    for part in parts:
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        elif with_results:
            response = _get(part, "functionResponse", "function_response")
            if response is not None:
                texts.append(replies.tool_result_text(response.get("response", {})))
    return " ".join(texts)


def prompt_tokens(req: GenerateRequest) -> int:
    total = TOKENS_REPLY_PRIMING + sum(TOKENS_PER_MESSAGE + replies.count_tokens(_parts_text(c["parts"]))
                                      for c in req.contents)
    if req.system is not None:
        total += TOKENS_PER_MESSAGE + replies.count_tokens(_parts_text(req.system["parts"]))
    return total


def turn(req: GenerateRequest) -> replies.Turn:
    last = req.contents[-1]
    responses = [r for r in (_get(p, "functionResponse", "function_response") for p in last["parts"])
                 if r is not None]
    user = next((c for c in reversed(req.contents) if c.get("role") in (None, "", "user")
                 and any(isinstance(p.get("text"), str) for p in c["parts"])), None)
    images = 0
    if user is not None:
        for part in user["parts"]:
            data = _get(part, "inlineData", "inline_data") or _get(part, "fileData", "file_data")
            if data and str(_get(data, "mimeType", "mime_type") or "").startswith("image/"):
                images += 1
    forced = None
    if req.mode == "ANY" and req.allowed:
        forced = req.allowed[0]
    return replies.Turn(
        user_text=_parts_text(user["parts"], with_results=False) if user else "", images=images,
        tool_result=replies.tool_result_text(responses[-1].get("response", {})) if responses else None,
        tools=req.tools, forced_tool=forced, tools_off=req.mode == "NONE")


@dataclass(frozen=True)
class Answer:
    parts: list[dict[str, Any]]  # the reply's parts (a thought part first, when asked for)
    finish_reason: str
    candidates_tokens: int
    thoughts_tokens: int


def answer(req: GenerateRequest, reply: replies.Reply, reasoning_tokens: int = 0) -> Answer:
    parts: list[dict[str, Any]] = []
    thoughts = reasoning_tokens
    if req.include_thoughts:
        thought = replies.thinking_text(turn(req).user_text)
        parts.append({"text": thought, "thought": True})
        thoughts += replies.count_tokens(thought)
    if reply.is_tool_call:
        parts.append({"functionCall": {"name": reply.tool_name, "args": reply.tool_arguments}})
        return Answer(parts, "STOP", 1 + replies.count_tokens(reply.arguments_json), thoughts)
    limited = replies.limit(reply.text or "", req.stop_sequences, req.max_tokens)
    text = json.dumps(limited.text) if req.json_output else limited.text
    parts.append({"text": text})
    return Answer(parts, "MAX_TOKENS" if limited.reason == "max_tokens" else "STOP",
                  replies.count_tokens(limited.text), thoughts)


def usage_metadata(prompt: int, candidates: int, thoughts: int, cached: int) -> dict[str, Any]:
    """Gemini's usage: the prompt count includes cached tokens; the total adds candidates and thoughts."""
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
                             "totalTokenCount": prompt + candidates + thoughts,
                             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if cached > 0:
        usage["cachedContentTokenCount"] = cached
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts > 0:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def response(response_id: str, model: str, parts: list[dict[str, Any]], finish_reason: str | None,
             usage: dict[str, Any]) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    candidate["index"] = 0
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}


def stream_chunks(response_id: str, model: str, ans: Answer, prompt: int, cached: int) -> list[dict[str, Any]]:
    """The chunks of streamGenerateContent: one part each, usage cumulative, finishReason on the last."""
    pieces: list[dict[str, Any]] = []
    for part in ans.parts:
        if "text" in part:
            pieces += [{**part, "text": piece} for piece in replies.split_words(part["text"]) or [""]]
        else:
            pieces.append(part)
    chunks = []
    spent = 0
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if not piece.get("thought"):
            spent = ans.candidates_tokens if last else spent + replies.count_tokens(piece.get("text", ""))
        usage = usage_metadata(prompt, spent, ans.thoughts_tokens, cached)
        chunks.append(response(response_id, model, [piece], ans.finish_reason if last else None, usage))
    return chunks


def models_list(models: list[str]) -> dict[str, Any]:
    return {"models": [model_info(m) for m in models]}


def model_info(model: str) -> dict[str, Any]:
    return {"name": f"models/{model}", "version": "001", "displayName": model,
            "description": "A deterministic demo model of the llmgw demo provider.",
            "inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536,
            "supportedGenerationMethods": GENERATION_METHODS,
            "temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2, "thinking": True}


def count_tokens_response(total: int, cached: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}
    if cached > 0:
        body["cachedContentTokenCount"] = cached
    return body
