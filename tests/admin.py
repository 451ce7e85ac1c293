"""The admin API's credentials in tests.

- A stack (``running_stack``, ``supervised_stack``, ``RunnerProcess``, ``llmgw run``): its ui-api
  generated the admin token into ``<state_dir>/admin-token`` at start; ``admin_client(stack)`` /
  ``admin_headers(stack)`` read it from there.
- ui-api in-process (``create_app``): pass ``**UI_TOKENS`` to ``UiApiSettings`` (no file is written)
  and send ``ADMIN_HEADERS``.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from llmgw_common.admin_auth import ADMIN_TOKEN_ENV, READONLY_TOKEN_ENV, token_path

ADMIN_TOKEN = "test-admin-" + secrets.token_urlsafe(24)
READONLY_TOKEN = "test-view-" + secrets.token_urlsafe(24)
UI_TOKENS = {ADMIN_TOKEN_ENV: ADMIN_TOKEN, READONLY_TOKEN_ENV: READONLY_TOKEN}  # UiApiSettings(**UI_TOKENS, ...)
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_TOKEN}"}
READONLY_HEADERS = {"authorization": f"Bearer {READONLY_TOKEN}"}


def stack_token(stack_or_state_dir, role: str = "admin") -> str:
    """The token a stack's ui-api uses: its environment's, else the file in its state dir."""
    env = getattr(stack_or_state_dir, "base_env", None) or getattr(stack_or_state_dir, "env", None) or {}
    given = env.get(ADMIN_TOKEN_ENV if role == "admin" else READONLY_TOKEN_ENV)
    if given:
        return given
    state_dir = getattr(stack_or_state_dir, "state_dir", stack_or_state_dir)
    return token_path(Path(state_dir), role).read_text().strip()  # type: ignore[arg-type]


def admin_headers(stack_or_state_dir, role: str = "admin") -> dict[str, str]:
    return {"authorization": f"Bearer {stack_token(stack_or_state_dir, role)}"}


def admin_client(stack, timeout: float = 10, role: str = "admin") -> httpx.Client:
    """An HTTP client of the stack's ui-api that sends the admin (or read-only) token."""
    return httpx.Client(base_url=f"http://127.0.0.1:{stack.ui_port}", headers=admin_headers(stack, role),
                        timeout=timeout)
