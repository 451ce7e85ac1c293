"""Fake external LLM providers for tests: real HTTP servers speaking the provider's wire format.

    with FakeProvider() as upstream:
        client = openai.OpenAI(base_url=upstream.url, api_key="x")
        upstream.behaviour.fail_status = 503
        ...
        assert upstream.requests[-1]["body"]["model"] == "demo-chat"
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmgw_cli.infra import free_port
from llmgw_demo_provider import Behaviour, create_app


class FakeProvider:
    """The demo provider served by uvicorn in a background thread on a free port."""

    def __init__(self, behaviour: Behaviour | None = None, host: str = "127.0.0.1", **behaviour_fields: Any):
        self.behaviour = behaviour if behaviour is not None else Behaviour(**behaviour_fields)
        self.host = host
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL as the openai SDK and provider configs want it."""
        return f"{self.origin}/v1"

    @property
    def anthropic_url(self) -> str:
        """Base URL as the anthropic SDK wants it (it adds /v1/messages)."""
        return self.origin

    @property
    def gemini_url(self) -> str:
        """Base URL of the Gemini face: {gemini_url}/models/{model}:generateContent."""
        return f"{self.origin}/v1beta"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.behaviour.requests

    def start(self, timeout: float = 10.0) -> FakeProvider:
        # free_port() can race with another process taking the port: then try another one.
        for _attempt in range(3):
            if self._start_on(free_port(self.host), timeout):
                return self
        raise RuntimeError(f"fake provider could not bind a port on {self.host}")

    def _start_on(self, port: int, timeout: float) -> bool:
        self.port = port
        config = uvicorn.Config(create_app(self.behaviour), host=self.host, port=port, http="httptools",
                                lifespan="off", access_log=False, log_level="warning",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"fake-provider-{port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():  # uvicorn exits when it cannot bind
                self._thread = None
                return False
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake provider not started after {timeout}s")
            time.sleep(0.01)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None or self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # a client still holds a connection open: do not wait for it
            self._server.force_exit = True
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- GitHub (Copilot's device-flow login and token exchange) ----------------------------------

GITHUB_TOKEN = "gho_" + "A1b2C3d4E5" * 4  # shaped like a real one
PENDING = {"error": "authorization_pending", "error_description": "The authorization request is still pending."}
SUCCESS = {"access_token": GITHUB_TOKEN, "token_type": "bearer", "scope": "read:user"}


class FakeGitHub:
    """github.com (device flow) + api.github.com (token exchange) + a Copilot API's ``/models``."""

    def __init__(self) -> None:
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.reset()

    def reset(self) -> None:
        self.interval = 1
        self.poll_answers: list[dict[str, Any]] = [PENDING, PENDING, SUCCESS]
        self.device_requests: list[dict[str, Any]] = []
        self.polls: list[dict[str, Any]] = []
        self.exchange_headers: list[dict[str, str]] = []
        self.exchange_status = 200
        self.exchange_delay_s = 0.0
        self.expires_in: float = 1800  # expires_at = now + this
        self.refresh_in: float | None = 1500
        self.api: str | None = None  # endpoints.api
        self.issued: list[str] = []
        self.models_requests: list[dict[str, str]] = []
        self.clock = time.time  # expires_at is now + expires_in by this clock (the provider's, in tests)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def exchanges(self) -> int:
        return len(self.exchange_headers)

    # ---- routes ----

    async def device_code(self, request: Request) -> JSONResponse:
        self.device_requests.append(await request.json())
        return JSONResponse({"device_code": "dc-123", "user_code": "WDJB-MJHT",
                             "verification_uri": f"{self.origin}/login/device", "expires_in": 900,
                             "interval": self.interval})

    async def access_token(self, request: Request) -> JSONResponse:
        self.polls.append(await request.json())
        answer = self.poll_answers.pop(0) if len(self.poll_answers) > 1 else self.poll_answers[0]
        return JSONResponse(answer)  # GitHub answers 200 with an "error" field while polling

    async def exchange(self, request: Request) -> JSONResponse:
        self.exchange_headers.append(dict(request.headers))
        if self.exchange_delay_s:
            await asyncio.sleep(self.exchange_delay_s)
        if self.exchange_status != 200:
            return JSONResponse({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
                                status_code=self.exchange_status)
        if request.headers.get("authorization") != f"token {GITHUB_TOKEN}":
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        token = f"tid=test;copilot-token-{len(self.issued) + 1}"
        self.issued.append(token)
        body: dict[str, Any] = {"token": token, "expires_at": int(self.clock() + self.expires_in),
                                "chat_enabled": True, "sku": "copilot_for_individual"}
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        if self.api:
            body["endpoints"] = {"api": self.api, "proxy": "https://proxy.example"}
        return JSONResponse(body)

    async def models(self, request: Request) -> JSONResponse:
        self.models_requests.append(dict(request.headers))
        if not self.issued or request.headers.get("authorization") != f"Bearer {self.issued[-1]}":
            return JSONResponse({"error": {"message": "unauthorized"}}, status_code=401)
        return JSONResponse({"object": "list", "data": [
            {"id": "gpt-4.1", "object": "model", "vendor": "Azure OpenAI",
             "capabilities": {"type": "chat", "family": "gpt-4.1", "limits": {"max_prompt_tokens": 128000},
                              "supports": {"streaming": True, "tool_calls": True}}},
            {"id": "claude-sonnet-4", "object": "model", "vendor": "Anthropic",
             "capabilities": {"type": "chat", "family": "claude-sonnet-4", "supports": {"streaming": True}}},
            {"id": "text-embedding-3-small", "object": "model",
             "capabilities": {"type": "embeddings", "family": "text-embedding-3-small"}},
        ]})

    # ---- server ----

    def start(self) -> FakeGitHub:
        app = Starlette(routes=[Route("/login/device/code", self.device_code, methods=["POST"]),
                                Route("/login/oauth/access_token", self.access_token, methods=["POST"]),
                                Route("/copilot_internal/v2/token", self.exchange, methods=["GET"]),
                                Route("/models", self.models, methods=["GET"])])
        for _attempt in range(3):
            self.port = free_port()
            config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="off", access_log=False,
                                    log_level="warning", timeout_graceful_shutdown=1)
            self.server = uvicorn.Server(config)
            self.thread = threading.Thread(target=self.server.run, name="fake-github", daemon=True)
            self.thread.start()
            deadline = time.monotonic() + 10
            while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.server.started:
                return self
        raise RuntimeError("fake GitHub did not start")

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(5)
