"""Google's native Gemini API (generativelanguage.googleapis.com, v1beta).

Every client format is translated through core types (no Gemini-format codec
exists); ``/{provider}/...`` raw calls are relayed with the provider's key.
The key goes in ``x-goog-api-key``, never in the URL (URLs end up in logs).

Wire facts this module relies on (Google's API reference and the google-genai
SDK): ``POST models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse`` (each ``data:`` line one whole
``GenerateContentResponse``, ``usageMetadata`` cumulative); the model's role
is "model"; function results go back as ``functionResponse`` parts naming the
function; ``promptTokenCount`` already includes ``cachedContentTokenCount``
and excludes ``thoughtsTokenCount``; errors are
``{"error": {"code", "message", "status", "details"}}`` with the wait of a 429
in a ``google.rpc.RetryInfo`` detail (``"retryDelay": "37s"``).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable, Mapping
from urllib.parse import parse_qsl, quote, urlencode

from llmgw_common.failures import FailureKind

from ..core.errors import UpstreamError, unsupported
from ..core.tokens import estimate_text_tokens
from ..core.types import (ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Finish, Image, Message,
                          Start, StreamEvent, Text, TextDelta, Thinking, ThinkingDelta, ToolCall, ToolCallDelta,
                          ToolCallStart, ToolResult, Usage, UsageUpdate)
from .base import HttpProvider, RawCall, RawReply, dumps, error_message_of, loads_object, token_count
from .http import HttpReply, sse_events

API_VERSION = "v1beta"
_VERSIONED = re.compile(r"/v\d+(?:(?:alpha|beta)\d*)?$")  # a base URL that already names its API version
_EFFORT_BUDGET = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
_FINISH_IN: dict[str, str] = {"STOP": "stop", "MAX_TOKENS": "length", **{r: "content_filter" for r in _FILTERED}}
_STATUS_KINDS = {
    "INVALID_ARGUMENT": FailureKind.BAD_REQUEST,
    # "free tier not available in your country; enable billing": this key cannot serve, another provider may
    "FAILED_PRECONDITION": FailureKind.AUTH,
    "UNAUTHENTICATED": FailureKind.AUTH,
    "PERMISSION_DENIED": FailureKind.AUTH,
    "NOT_FOUND": FailureKind.NOT_FOUND,
    "RESOURCE_EXHAUSTED": FailureKind.RATE_LIMITED,
    "UNAVAILABLE": FailureKind.OVERLOADED,
    "INTERNAL": FailureKind.SERVER,
    "DEADLINE_EXCEEDED": FailureKind.TIMEOUT,
}
_KEY_REASONS = ("API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED")
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # protobuf Duration in JSON: "37s", "1.5s"
_RETRY_IN_MESSAGE = re.compile(r"retry in (\d+(?:\.\d+)?)(ms|s)\b", re.IGNORECASE)
# a per-day quota resets at midnight Pacific time; the cooldown is per provider (every model of the key),
# so it is capped: one wasted request an hour is cheaper than a key locked out for a whole day
DAILY_QUOTA_MAX_WAIT_S = 3600.0
EMBED_BATCH = 100  # batchEmbedContents takes at most 100 requests per call
# Gemini 3 refuses a replayed functionCall part without its thoughtSignature (400). Clients of other formats
# cannot carry it back, so replayed calls carry the sentinel Google documents for exactly this case.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_SIGNED_MODELS = re.compile(r"^(?:models/)?gemini-(?:[3-9]|[1-9]\d|(?:flash|flash-lite|pro)-latest)")

# The function-declaration / responseSchema ``Schema`` is a subset of OpenAPI 3.0. Only its fields are
# kept, recursively; everything else is dropped: $schema, $id, $comment, additionalProperties, strict,
# patternProperties, const (becomes enum), oneOf (becomes anyOf), allOf (merged), not, if/then/else,
# examples, exclusiveMinimum/Maximum, multipleOf, uniqueItems, readOnly/writeOnly, contentEncoding...;
# $ref into $defs / definitions is inlined first (the Schema has no references).
_SCHEMA_KEYS = frozenset({"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                          "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                          "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
                          "maximum"})
# formats the Gemini API accepts per type (others are refused on strings): dropped when not listed
_FORMATS = {"string": {"enum", "date-time"}, "number": {"float", "double"}, "integer": {"int32", "int64"}}
_MAX_REF_DEPTH = 8


class GeminiProvider(HttpProvider):
    type = "gemini"
    genai_system = "gcp.gemini"
    error_format = "gemini"
    default_base_url = f"https://generativelanguage.googleapis.com/{API_VERSION}"
    passthrough = frozenset({"raw"})

    @property
    def base_url(self) -> str:
        # accept https://generativelanguage.googleapis.com with or without /v1beta (or another version)
        url = super().base_url.rstrip("/")
        return url if _VERSIONED.search(url) else f"{url}/{API_VERSION}"

    @property
    def root_url(self) -> str:
        """The base without its version: raw paths name their own (``/v1beta/models/...``)."""
        return _VERSIONED.sub("", self.base_url)

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.ctx.secret} if self.ctx.secret else {}

    # ---- translated ---------------------------------------------------------

    async def chat(self, req: ChatRequest, model: str) -> ChatResponse:
        return parse_response(await self.post_json(f"/{_model_path(model)}:generateContent",
                                                   generate_body(req, model)), model)

    def chat_stream(self, req: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        return self.post_events(f"/{_model_path(model)}:streamGenerateContent?alt=sse", generate_body(req, model),
                                lambda reply: stream_events(reply, model, self.classify))

    async def embed(self, req: EmbeddingRequest, model: str) -> EmbeddingResponse:
        if any(not isinstance(x, str) for x in req.inputs):
            raise unsupported(f"provider {self.id} (gemini) embeds text, not token ids")
        texts: list[str] = list(req.inputs)  # type: ignore[arg-type]
        name = _model_path(model)
        vectors: list[list[float] | str] = []
        for start in range(0, len(texts), EMBED_BATCH):
            requests = []
            for text in texts[start:start + EMBED_BATCH]:
                item: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
                if req.dimensions is not None:
                    item["outputDimensionality"] = req.dimensions
                requests.append(item)
            reply = await self.send(f"/{name}:batchEmbedContents", dumps({"requests": requests}), stream=False)
            obj = loads_object(await reply.read())
            embeddings = obj.get("embeddings")
            if not isinstance(embeddings, list) or len(embeddings) != len(requests):
                raise UpstreamError(502, "upstream sent a different number of embeddings than asked for",
                                    kind=FailureKind.PROTOCOL)
            for e in embeddings:
                values = e.get("values") if isinstance(e, dict) else None
                if not isinstance(values, list):
                    raise UpstreamError(502, "upstream sent an embedding without values", kind=FailureKind.PROTOCOL)
                vectors.append(_b64_floats(values) if req.encoding_format == "base64" else values)
        # Gemini does not report embedding tokens: estimated (the same count admission used)
        return EmbeddingResponse(model=model, vectors=vectors,
                                 usage=Usage(input_tokens=sum(estimate_text_tokens(t) for t in texts)))

    # ---- pass-through (raw only) ---------------------------------------------

    async def relay_raw(self, call: RawCall, root: str | None = None) -> RawReply:
        # raw paths carry their API version, so they join the root; a client's ?key= (its gateway key)
        # must not travel to Google: ours goes in the header
        return await super().relay_raw(replace(call, path=_without_key(call.path)), root=root or self.root_url)

    def raw_usage(self, payload: bytes) -> Usage:
        return _usage_of_body(payload)

    # ---- errors ---------------------------------------------------------------

    def error_message(self, status: int, body: bytes) -> str:
        return error_message_of(status, _error_member(body))

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        err = super().classify(status, body, headers)
        info = _error_object(body)
        if info is None:
            return err
        details = [d for d in info.get("details") or [] if isinstance(d, dict)]
        kind = _STATUS_KINDS.get(str(info.get("status") or ""))
        if kind is not None:
            err.kind = kind
        reasons = {d.get("reason") for d in details if d.get("@type") == _ERROR_INFO}
        if reasons & set(_KEY_REASONS) or "api key not valid" in str(info.get("message") or "").lower():
            err.kind = FailureKind.AUTH  # a 400 INVALID_ARGUMENT, but our key's fault, not the client's
        if status == 400 and "exceeds the maximum number of tokens" in str(info.get("message") or ""):
            err.kind = FailureKind.CONTEXT_LENGTH  # "The input token count (1196265) exceeds the maximum ..."
        if err.kind is FailureKind.RATE_LIMITED or status == 429:
            err.kind = FailureKind.RATE_LIMITED
            wait = quota_wait_s(details, str(info.get("message") or ""))
            if wait is not None:
                err.retry_after_s = wait
        return err


def _model_path(model: str) -> str:
    name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    return quote(name, safe="/")


def _without_key(path: str) -> str:
    base, sep, query = path.partition("?")
    if not sep:
        return path
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "key"]
    return base + ("?" + urlencode(kept) if kept else "")


def _b64_floats(values: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


# ---- errors -----------------------------------------------------------------------

def _error_member(body: bytes) -> Any:
    """The ``error`` member of Gemini's error body, also inside the array answers."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(obj, list) and obj:  # streamGenerateContent without alt=sse answers arrays
        obj = obj[0]
    return obj.get("error") if isinstance(obj, dict) else None


def _error_object(body: bytes) -> dict[str, Any] | None:
    err = _error_member(body)
    return err if isinstance(err, dict) else None


def _duration_s(value: Any) -> float | None:
    if isinstance(value, str):
        m = _DURATION.match(value)
        return float(m.group(1)) if m else None
    if isinstance(value, dict):  # {"seconds": 37, "nanos": 5e8}, as some transcoders write it
        try:
            return float(value.get("seconds") or 0) + float(value.get("nanos") or 0) / 1e9
        except (TypeError, ValueError):
            return None
    return None


def seconds_to_pacific_midnight(now: datetime | None = None) -> float:
    """When Gemini's per-day quotas reset (midnight in America/Los_Angeles)."""
    now = now or datetime.now(timezone.utc)
    try:
        from zoneinfo import ZoneInfo

        local = now.astimezone(ZoneInfo("America/Los_Angeles"))
    except Exception:  # no time-zone data: Pacific standard time is close enough
        local = now.astimezone(timezone(timedelta(hours=-8)))
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    # in UTC: a difference of two times in one ZoneInfo is wall-clock time (wrong on DST days)
    return max(1.0, (midnight.astimezone(timezone.utc) - now.astimezone(timezone.utc)).total_seconds())


def quota_wait_s(details: list[dict[str, Any]], message: str = "", now: datetime | None = None) -> float | None:
    """How long a RESOURCE_EXHAUSTED answer says to wait: the RetryInfo delay (else the "Please retry in
    38.9s" of the message); for a per-day quota at least until its reset, capped at ``DAILY_QUOTA_MAX_WAIT_S``."""
    wait: float | None = None
    for d in details:
        if d.get("@type") == _RETRY_INFO:
            wait = _duration_s(d.get("retryDelay"))
    if wait is None:
        m = _RETRY_IN_MESSAGE.search(message)
        if m:
            wait = float(m.group(1)) / (1000 if m.group(2).lower() == "ms" else 1)
    daily = False
    for d in details:
        if d.get("@type") == _QUOTA_FAILURE:
            daily |= any("perday" in str(v.get("quotaId") or "").lower()
                         for v in d.get("violations") or [] if isinstance(v, dict))
        elif d.get("@type") == _ERROR_INFO:
            daily |= "perday" in str((d.get("metadata") or {}).get("quota_limit") or "").lower()
    if daily:
        # a daily quota's RetryInfo (when any) is often seconds: the allowance itself comes back at midnight
        return max(wait or 0.0, min(DAILY_QUOTA_MAX_WAIT_S, seconds_to_pacific_midnight(now)))
    return wait


# ---- core -> Gemini -----------------------------------------------------------------

def clean_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A JSON schema as Gemini's ``Schema`` subset (see ``_SCHEMA_KEYS``), recursively."""
    if not isinstance(schema, dict):
        return schema
    if defs is None:
        defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1]) if ref.startswith(("#/$defs/", "#/definitions/")) else None
        if not isinstance(target, dict) or depth >= _MAX_REF_DEPTH:
            return {"type": "object", **({"description": schema["description"]} if "description" in schema else {})}
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return clean_schema(merged, defs, depth + 1)
    schema = dict(schema)
    if isinstance(schema.get("allOf"), list):  # merged: properties and required united
        for part in schema.pop("allOf"):
            part = clean_schema(part, defs, depth)
            if isinstance(part, dict):
                for k, v in part.items():
                    if k == "properties" and isinstance(v, dict):
                        schema["properties"] = {**(schema.get("properties") or {}), **v}
                    elif k == "required" and isinstance(v, list):
                        schema["required"] = list(dict.fromkeys([*(schema.get("required") or []), *v]))
                    else:
                        schema.setdefault(k, v)
    if "oneOf" in schema and "anyOf" not in schema:
        schema["anyOf"] = schema.pop("oneOf")
    if "const" in schema and "enum" not in schema:
        schema["enum"] = [schema["const"]]
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: a nullable string; several types: anyOf
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        if len(kinds) == 1:
            kind = kinds[0]
        else:
            kind = None
            if kinds:
                schema["anyOf"] = [{**{k: v for k, v in schema.items() if k not in ("type", "anyOf")}, "type": k}
                                   for k in kinds]
    if kind == "null":
        out["nullable"] = True
        kind = None
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS or key in ("type", "nullable"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: clean_schema(sub, defs, depth) for name, sub in value.items()}
        elif key == "items":
            first = value[0] if isinstance(value, list) and value else value  # tuple form: the first
            if isinstance(first, dict):
                out[key] = clean_schema(first, defs, depth)
        elif key == "anyOf" and isinstance(value, list):
            options = [clean_schema(v, defs, depth) for v in value]
            if any(isinstance(o, dict) and set(o) == {"nullable"} for o in options):
                out["nullable"] = True
                options = [o for o in options if not (isinstance(o, dict) and set(o) == {"nullable"})]
            if len(options) == 1 and isinstance(options[0], dict):
                for k, v in options[0].items():
                    out.setdefault(k, v)
            elif options:
                out[key] = options
        elif key == "enum" and isinstance(value, list):
            out[key] = [v if isinstance(v, str) else json.dumps(v) for v in value if v is not None]
        elif key == "format":
            if isinstance(kind, str) and value in _FORMATS.get(kind.lower(), ()):
                out[key] = value
        elif key == "required" and isinstance(value, list):
            props = schema.get("properties")
            names = [n for n in value if isinstance(n, str) and (not isinstance(props, dict) or n in props)]
            if names:
                out[key] = names
        else:
            out[key] = value
    if isinstance(kind, str):
        out["type"] = kind
    if schema.get("nullable") is True:
        out["nullable"] = True
    return out


def _parameters(schema: dict[str, Any]) -> dict[str, Any] | None:
    """Function parameters; None for a function without any (Gemini refuses an OBJECT with no properties)."""
    cleaned = clean_schema(schema)
    if not isinstance(cleaned, dict) or not cleaned.get("properties"):
        return None
    cleaned.setdefault("type", "object")
    return cleaned


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


def _image(p: Image) -> dict[str, Any]:
    if p.data is not None:
        return {"inlineData": {"mimeType": p.media_type or "image/png", "data": p.data}}
    url = p.url or ""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {"inlineData": {"mimeType": media_type or "image/png", "data": data}}
    if not url.startswith(("https://", "gs://")):
        # Gemini fetches its own file URIs, gs:// and public https URLs (since January 2026); nothing else
        raise unsupported(f"Gemini cannot fetch the image URL {url[:80]!r}: send it inline (base64)")
    return {"fileData": {"mimeType": p.media_type or _guess_image_type(url), "fileUri": url}}


def _guess_image_type(url: str) -> str:
    path = url.split("?", 1)[0].lower()
    for ext, mime in ((".png", "image/png"), (".jpg", "image/jpeg"), (".jpeg", "image/jpeg"),
                      (".webp", "image/webp"), (".gif", "image/gif"), (".heic", "image/heic"),
                      (".heif", "image/heif")):
        if path.endswith(ext):
            return mime
    return "image/jpeg"


def _function_response(r: ToolResult, name: str) -> dict[str, Any]:
    text = "".join(p.text for p in r.content if isinstance(p, Text))
    response: dict[str, Any] | None = None
    try:
        value = json.loads(text) if text.strip().startswith("{") else None
    except ValueError:
        value = None
    if isinstance(value, dict):
        response = value
    else:
        response = {"error": text} if r.is_error else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def contents(messages: list[Message], model: str = "") -> list[dict[str, Any]]:
    """Core messages (system ones excepted) as Gemini ``contents``, same-role turns merged."""
    names: dict[str, str] = {}  # tool call id -> function name (the latest call with that id)
    signed = bool(_SIGNED_MODELS.match(model))
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        parts: list[dict[str, Any]] = []
        for p in m.parts:
            if isinstance(p, Text):
                if p.text:
                    parts.append({"text": p.text})
            elif isinstance(p, Image):
                parts.append(_image(p))
            elif isinstance(p, ToolResult):
                # Gemini answers a call by its function's name; unknown ids keep theirs (a malformed history)
                parts.append(_function_response(p, p.name or names.get(p.tool_call_id) or p.tool_call_id))
                parts += [_image(i) for i in p.content if isinstance(i, Image)]
            # Thinking is not sent back: Gemini keeps its reasoning in signatures, not in text
        role = "model" if m.role == "assistant" else "user"
        if m.role == "assistant":
            for i, call in enumerate(m.tool_calls):
                names[call.id] = call.name
                part: dict[str, Any] = {"functionCall": {"name": call.name, "args": _arguments(call.arguments)}}
                if signed and i == 0:
                    part["thoughtSignature"] = SKIP_SIGNATURE
                parts.append(part)
        if not parts:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    return out


def _thinking_budget(req: ChatRequest) -> int | None:
    if req.thinking_budget is not None:
        return req.thinking_budget
    if req.reasoning_effort:
        return _EFFORT_BUDGET.get(req.reasoning_effort)
    return None


def generate_body(req: ChatRequest, model: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"contents": contents(req.messages, model)}
    system = req.system_text()
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if req.tools:
        declarations = []
        for t in req.tools:
            declaration: dict[str, Any] = {"name": t.name}
            if t.description:
                declaration["description"] = t.description
            parameters = _parameters(t.parameters)
            if parameters is not None:
                declaration["parameters"] = parameters
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
        choice = req.tool_choice
        if choice is not None:
            calling: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY",
                                                "tool": "ANY"}[choice.mode]}
            if choice.mode == "tool" and choice.name:
                calling["allowedFunctionNames"] = [choice.name]
            body["toolConfig"] = {"functionCallingConfig": calling}
    config: dict[str, Any] = {}
    budget = _thinking_budget(req)
    if req.max_tokens is not None:
        # maxOutputTokens includes the thoughts: a budget as large as the limit would leave no answer
        config["maxOutputTokens"] = req.max_tokens + budget if budget and budget > 0 and \
            req.max_tokens <= budget else req.max_tokens
    for name, key in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed")):
        value = getattr(req, name)
        if value is not None:
            config[key] = value
    # some Gemini models refuse penalties outright ("Penalty is not enabled"): only a real one is sent
    for name, key in (("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        value = getattr(req, name)
        if value:
            config[key] = value
    if req.stop:
        config["stopSequences"] = req.stop
    if req.n != 1:
        config["candidateCount"] = req.n
    fmt = req.response_format or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseSchema"] = clean_schema(schema)
    if budget is not None:
        thinking: dict[str, Any] = {"thinkingBudget": budget}
        if budget != 0:  # -1 is "dynamic"; 0 turns thinking off
            thinking["includeThoughts"] = True
        config["thinkingConfig"] = thinking
    if config:
        body["generationConfig"] = config
    return body


# ---- Gemini -> core -----------------------------------------------------------------

def usage_from(obj: Any) -> Usage | None:
    """``usageMetadata``: the prompt count includes cached tokens; our output includes the thoughts."""
    if not isinstance(obj, dict):
        return None
    thoughts = token_count(obj.get("thoughtsTokenCount"))
    prompt = token_count(obj.get("promptTokenCount")) + token_count(obj.get("toolUsePromptTokenCount"))
    return Usage(input_tokens=prompt, output_tokens=token_count(obj.get("candidatesTokenCount")) + thoughts,
                 cache_read_tokens=token_count(obj.get("cachedContentTokenCount")), reasoning_tokens=thoughts)


def _usage_of_body(content: bytes) -> Usage:
    if b'"usageMetadata"' not in content:
        return Usage()
    try:
        obj = json.loads(content)
    except ValueError:
        return Usage()
    if isinstance(obj, list):  # streamGenerateContent without alt=sse: the last usage is the whole
        obj = next((o for o in reversed(obj) if isinstance(o, dict) and "usageMetadata" in o), None)
    return (usage_from(obj.get("usageMetadata")) if isinstance(obj, dict) else None) or Usage()


def _candidate(obj: dict[str, Any]) -> dict[str, Any] | None:
    for c in obj.get("candidates") or []:
        if isinstance(c, dict) and c.get("index", 0) == 0:
            return c
    return None


def _finish(reason: Any, with_calls: bool) -> str:
    finish = _FINISH_IN.get(str(reason), "stop")
    return "tool_calls" if with_calls and finish == "stop" else finish


def _call(part: dict[str, Any], index: int) -> ToolCall:
    fn = part["functionCall"]
    return ToolCall(id=str(fn.get("id") or f"call_{index}"), name=str(fn.get("name") or ""),
                    arguments=json.dumps(fn.get("args") or {}, ensure_ascii=False))


def parse_response(obj: dict[str, Any], model: str) -> ChatResponse:
    usage = usage_from(obj.get("usageMetadata")) or Usage()
    resp = ChatResponse(id=str(obj.get("responseId") or ""), model=str(obj.get("modelVersion") or model),
                        usage=usage, created=int(time.time()))
    candidate = _candidate(obj)
    if candidate is None:
        if (obj.get("promptFeedback") or {}).get("blockReason"):
            resp.finish_reason = "content_filter"  # the prompt was blocked: an answer, not an error
            return resp
        raise UpstreamError(502, "upstream sent no candidates", kind=FailureKind.PROTOCOL)
    for part in (candidate.get("content") or {}).get("parts") or []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("functionCall"), dict):
            resp.tool_calls.append(_call(part, len(resp.tool_calls)))
        elif isinstance(part.get("text"), str):
            # a thought's signature is Gemini's alone: not offered to clients as a Thinking signature
            resp.parts.append(Thinking(text=part["text"]) if part.get("thought") else Text(part["text"]))
    resp.finish_reason = _finish(candidate.get("finishReason") or "STOP", bool(resp.tool_calls))  # type: ignore
    return resp


async def stream_events(reply: HttpReply, model: str,
                        classify: Callable[[int, bytes, Mapping[str, str]], UpstreamError]
                        ) -> AsyncIterator[StreamEvent]:
    """``streamGenerateContent?alt=sse`` chunks (candidate 0) as core stream events."""
    started = False
    finished = False
    calls = 0
    async for _event, data in sse_events(reply.lines()):
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError(502, "upstream sent a stream chunk that is not JSON", kind=FailureKind.PROTOCOL) from None
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("error"), dict):
            code = chunk["error"].get("code")
            raise classify(code if isinstance(code, int) and 400 <= code < 600 else 502, data.encode(), {})
        if not started:
            started = True
            yield Start(id=str(chunk.get("responseId") or ""), model=str(chunk.get("modelVersion") or model),
                        created=int(time.time()))
        candidate = _candidate(chunk)
        reason: str | None = None
        if candidate is not None and not finished:
            for part in (candidate.get("content") or {}).get("parts") or []:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("functionCall"), dict):
                    call = _call(part, calls)
                    yield ToolCallStart(calls, call.id, call.name)
                    yield ToolCallDelta(calls, call.arguments)  # Gemini sends each call whole
                    calls += 1
                elif isinstance(part.get("text"), str) and part["text"]:
                    yield ThinkingDelta(text=part["text"]) if part.get("thought") else TextDelta(part["text"])
            if candidate.get("finishReason"):
                reason = _finish(candidate["finishReason"], calls > 0)
        elif candidate is None and not finished and (chunk.get("promptFeedback") or {}).get("blockReason"):
            reason = "content_filter"
        usage = usage_from(chunk.get("usageMetadata"))
        if usage is not None:
            yield UsageUpdate(usage)  # cumulative; before Finish, so renderers have it at the end
        if reason is not None:
            finished = True
            yield Finish(reason)  # type: ignore[arg-type]
    if not finished:
        raise UpstreamError(502, "upstream closed the stream before it finished", kind=FailureKind.PROTOCOL)
