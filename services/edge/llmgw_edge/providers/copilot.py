"""GitHub Copilot subscriptions (provider type ``copilot``).

Copilot's chat API is OpenAI chat: this is ``OpenAIProvider`` with other
credentials. Three tokens are involved:

1. a **GitHub OAuth token** from the device flow (``llmgw copilot login``,
   stored in ``token_file``: ``<state dir>/copilot/<provider id>.json`` unless
   the config names one), or pasted as the provider's ``api_key``;
2. exchanged at ``GET {LLMGW_GITHUB_API_URL}/copilot_internal/v2/token``
   (``authorization: token <github token>`` plus the editor headers) for a
   **short-lived Copilot token** ``{token, expires_at, refresh_in,
   endpoints: {api}}``, kept in memory only and exchanged again before it
   expires (one exchange at a time per provider: an ``asyncio.Lock``);
3. sent as ``authorization: Bearer <copilot token>`` with the editor headers
   Copilot requires to ``{endpoints.api}/chat/completions``, ``/embeddings``
   and ``/models``.

A 401 from the chat API drops the Copilot token; the request is sent once
more with a fresh one. Tokens never appear in logs or errors (the token
file's path does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping

from llmgw_common.config import ProviderConfig
from llmgw_common.failures import FailureKind, kind_for_status
from llmgw_common.logs import redact

from ..core.errors import UpstreamError
from .base import RawCall, RawReply, loads_object
from .http import HttpReply
from .openai import OpenAIProvider

log = logging.getLogger(__name__)

DEFAULT_GITHUB_URL = "https://github.com"
DEFAULT_GITHUB_API_URL = "https://api.github.com"
DEFAULT_COPILOT_API_URL = "https://api.githubcopilot.com"
TOKEN_EXCHANGE_PATH = "/copilot_internal/v2/token"

# What the Copilot Chat editor plugin sends (as the open-source Copilot clients do: ericc-ch/copilot-api,
# LiteLLM's github_copilot module). Any of them can be overridden by the provider's ``headers``.
COPILOT_VERSION = "0.26.7"
EDITOR_HEADERS: dict[str, str] = {
    "editor-version": "vscode/1.99.3",
    "editor-plugin-version": f"copilot-chat/{COPILOT_VERSION}",
    "user-agent": f"GitHubCopilotChat/{COPILOT_VERSION}",
    "x-github-api-version": "2025-04-01",
}
API_HEADERS: dict[str, str] = {
    **EDITOR_HEADERS,
    "copilot-integration-id": "vscode-chat",
    "openai-intent": "conversation-panel",
}

REFRESH_MARGIN_S = 60.0  # exchange again when less than this is left before expires_at
MIN_LIFETIME_S = 5.0  # ... but never sooner than this after an exchange (a skewed clock)
RETRY_EXCHANGE_S = 10.0  # a failed exchange while the old token still works: try again after this
MODELS_TTL_S = 300.0


def github_url(env: Mapping[str, str] | None = None) -> str:
    return (env if env is not None else os.environ).get("LLMGW_GITHUB_URL", DEFAULT_GITHUB_URL).rstrip("/")


def github_api_url(env: Mapping[str, str] | None = None) -> str:
    return (env if env is not None else os.environ).get("LLMGW_GITHUB_API_URL", DEFAULT_GITHUB_API_URL).rstrip("/")


def token_path(config: ProviderConfig, state_dir: Path) -> Path:
    """Where ``llmgw copilot login`` keeps the provider's GitHub token."""
    if config.token_file:
        return Path(config.token_file).expanduser()
    return Path(state_dir) / "copilot" / f"{config.id}.json"


def login_hint(provider_id: str) -> str:
    return f"run `llmgw copilot login --provider {provider_id}`"


def read_github_token(path: Path, provider_id: str) -> str:
    """The GitHub token in a token file; an ``AUTH`` failure naming the path (never the content)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UpstreamError(401, f"provider {provider_id}: no GitHub token at {path}; {login_hint(provider_id)}",
                            kind=FailureKind.AUTH) from None
    except OSError as exc:
        raise UpstreamError(401, f"provider {provider_id}: cannot read {path} ({exc.strerror or type(exc).__name__})"
                            f"; {login_hint(provider_id)}", kind=FailureKind.AUTH) from None
    try:
        token = json.loads(text).get("github_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise UpstreamError(401, f"provider {provider_id}: {path} holds no github_token; {login_hint(provider_id)}",
                            kind=FailureKind.AUTH)
    return token


def github_message(body: bytes) -> str:
    """GitHub's own ``message`` from an error body, redacted and bounded ("" when there is none)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    message = obj.get("message") if isinstance(obj, dict) else None
    return redact(str(message)[:200]) if message else ""


@dataclass(slots=True)
class CopilotToken:
    token: str
    expires_at: float  # epoch seconds
    refresh_at: float  # epoch seconds: exchange again from then on
    api: str | None  # endpoints.api: the Copilot API base URL for this account

    def __repr__(self) -> str:  # never the token itself
        return f"CopilotToken(expires_at={self.expires_at}, refresh_at={self.refresh_at}, api={self.api!r})"


class CopilotProvider(OpenAIProvider):
    type = "copilot"
    genai_system = "github_copilot"
    default_base_url = DEFAULT_COPILOT_API_URL
    clock: ClassVar = staticmethod(time.time)  # tests replace it on the instance

    def __init__(self, config: ProviderConfig, ctx):
        super().__init__(config, ctx)
        self._token: CopilotToken | None = None
        self._lock = asyncio.Lock()
        self.exchanges = 0  # Copilot tokens fetched so far (observability, tests)
        self._models: list[str] | None = None
        self._models_at = 0.0
        self.model_info: dict[str, dict[str, Any]] = {}  # id -> the /models entry (capabilities, limits...)

    # ---- where ------------------------------------------------------------------

    @property
    def serves_responses(self) -> bool:
        return self.config.responses_api is True  # Copilot's chat API is the one every model speaks

    @property
    def base_url(self) -> str:
        token = self._token
        if token is not None and token.api:
            return token.api
        return self.config.base_url or DEFAULT_COPILOT_API_URL

    @property
    def token_file(self) -> Path:
        return token_path(self.config, self.ctx.state_dir)

    # ---- the Copilot token ------------------------------------------------------

    def _fresh(self, token: CopilotToken | None) -> bool:
        return token is not None and self.clock() < token.refresh_at

    async def copilot_token(self) -> CopilotToken:
        """The cached Copilot token, exchanged again when it is due (one exchange at a time)."""
        token = self._token
        if self._fresh(token):
            return token  # type: ignore[return-value]
        async with self._lock:
            token = self._token
            if self._fresh(token):
                return token  # type: ignore[return-value]
            return await self._renew(token)

    async def refresh_after_401(self, used: CopilotToken | None) -> CopilotToken:
        """The chat API refused ``used``: exchange again unless another request already did."""
        async with self._lock:
            token = self._token
            if token is not None and token is not used:
                return token
            self._token = None
            return await self._renew(None)

    async def _renew(self, old: CopilotToken | None) -> CopilotToken:
        try:
            new = await self._exchange()
        except UpstreamError as exc:
            # a passing failure while the old token still works: keep it a little longer
            if exc.kind != FailureKind.AUTH and old is not None and self.clock() < old.expires_at - MIN_LIFETIME_S:
                log.warning("provider %s: Copilot token exchange failed (%s); the current token is kept",
                            self.id, exc.message)
                old.refresh_at = self.clock() + RETRY_EXCHANGE_S
                return old
            raise
        self._token = new
        if new.api != (old.api if old else None):
            self._models = None  # another API: its model list may differ
        return new

    async def github_token(self) -> str:
        if self.ctx.secret:  # a token pasted into the config (api_key) wins over the file
            return self.ctx.secret
        return await asyncio.to_thread(read_github_token, self.token_file, self.id)

    def exchange_headers(self, github_token: str) -> dict[str, str]:
        headers = {"accept": "application/json", **EDITOR_HEADERS}
        headers.update({k.lower(): v for k, v in self.config.headers.items() if k.lower() in EDITOR_HEADERS})
        headers["authorization"] = f"token {github_token}"
        return headers

    async def _exchange(self) -> CopilotToken:
        github_token = await self.github_token()
        url = github_api_url() + TOKEN_EXCHANGE_PATH
        reply = await self.ctx.transport.request("GET", url, None, self.exchange_headers(github_token),
                                                 min(self.config.timeout_s, 30.0))
        try:
            body = await reply.read()
        except UpstreamError:
            body = b""
        self.exchanges += 1
        if reply.status in (401, 403, 404):
            said = github_message(body)
            what = "GitHub refused the token" if reply.status == 401 else \
                "this GitHub account has no Copilot access (or the token was revoked)"
            source = "the api_key in the config" if self.ctx.secret else str(self.token_file)
            raise UpstreamError(reply.status, f"provider {self.id}: Copilot token exchange failed ({reply.status}: "
                                f"{what}{'; GitHub says: ' + said if said else ''}); GitHub token from {source}; "
                                f"{login_hint(self.id)}", kind=FailureKind.AUTH)
        if reply.status >= 300:
            raise UpstreamError(reply.status if reply.status >= 400 else 502,
                                f"provider {self.id}: Copilot token exchange failed (GitHub {reply.status})",
                                kind=kind_for_status(reply.status) if reply.status >= 400 else FailureKind.PROTOCOL)
        obj = loads_object(body, "the Copilot token exchange")
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise UpstreamError(502, f"provider {self.id}: the Copilot token exchange answered without a token",
                                kind=FailureKind.PROTOCOL)
        now = self.clock()
        expires_at = _number(obj.get("expires_at")) or now + 25 * 60
        refresh_at = expires_at - REFRESH_MARGIN_S
        refresh_in = _number(obj.get("refresh_in"))
        if refresh_in:
            refresh_at = min(refresh_at, now + refresh_in)
        refresh_at = max(refresh_at, now + MIN_LIFETIME_S)
        endpoints = obj.get("endpoints")
        api = endpoints.get("api") if isinstance(endpoints, dict) else None
        api = api.rstrip("/") if isinstance(api, str) and api.startswith(("https://", "http://")) else None
        log.info("provider %s: Copilot token exchanged (refresh in %.0fs)", self.id, refresh_at - now)
        return CopilotToken(token=token, expires_at=expires_at, refresh_at=refresh_at, api=api)

    # ---- requests ---------------------------------------------------------------

    async def credentials(self) -> dict[str, str]:
        token = await self.copilot_token()
        return {"authorization": f"Bearer {token.token}", **API_HEADERS, "x-request-id": str(uuid.uuid4())}

    async def send(self, path: str, body: bytes | None, stream: bool, method: str = "POST",
                   extra_headers: Mapping[str, str] | None = None, url: str | None = None) -> HttpReply:
        """One request; a 401 drops the Copilot token and the request goes once more with a fresh one."""
        if body and b'"image_url"' in body:  # Copilot refuses images without it
            extra_headers = {"copilot-vision-request": "true", **(extra_headers or {})}
        used = await self.copilot_token()
        try:
            return await super().send(path, body, stream, method, extra_headers, url)
        except UpstreamError as exc:
            if exc.status != 401:
                raise
        log.info("provider %s: the Copilot API refused the token (401); exchanging it again", self.id)
        await self.refresh_after_401(used)
        return await super().send(path, body, stream, method, extra_headers, url)

    async def relay(self, call: RawCall, model: str | None) -> RawReply:
        if call.format != "raw":
            return await super().relay(call, model)
        used = await self.copilot_token()  # before relay_raw reads base_url: endpoints.api is known
        if call.path.startswith("/v1/") and not self.base_url.endswith("/v1"):
            call = replace(call, path=call.path[3:])  # Copilot's API has no /v1 prefix
        reply = await super().relay(call, model)
        if reply.status != 401 or reply.body is None:
            return reply
        await self.refresh_after_401(used)
        return await super().relay(call, model)

    # ---- models -------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """Model ids this subscription serves (``GET {api}/models``), cached for a few minutes."""
        if self._models is not None and self.clock() - self._models_at < MODELS_TTL_S:
            return list(self._models)
        reply = await self.send("/models", None, stream=False, method="GET")
        obj = loads_object(await reply.read(), "the Copilot model list")
        ids: list[str] = []
        info: dict[str, dict[str, Any]] = {}
        for entry in obj.get("data") or []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"] not in info:
                ids.append(entry["id"])
                info[entry["id"]] = entry
        self._models, self._models_at, self.model_info = ids, self.clock(), info
        return list(ids)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
