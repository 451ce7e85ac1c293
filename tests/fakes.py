"""Fake external LLM providers for tests: real HTTP servers speaking the provider's wire format.

    with FakeProvider() as upstream:
        client = openai.OpenAI(base_url=upstream.url, api_key="x")
        upstream.behaviour.fail_status = 503
        ...
        assert upstream.requests[-1]["body"]["model"] == "demo-chat"
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

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

    def start(self, timeout: float = 10.0) -> "FakeProvider":
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

    def __enter__(self) -> "FakeProvider":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
