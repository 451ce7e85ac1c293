"""The edge's own command, ``llmgw copilot login``: sign a ``copilot`` provider in to GitHub with the OAuth
device flow.

1. ``POST {LLMGW_GITHUB_URL}/login/device/code`` (the Copilot editor plugins' public client id, scope
   ``read:user``) gives a ``user_code`` to enter at ``verification_uri``;
2. ``POST {LLMGW_GITHUB_URL}/login/oauth/access_token`` is polled every ``interval`` seconds (longer after
   ``slow_down``) until the user approves (``access_denied`` / ``expired_token`` end it);
3. the GitHub token is written to the provider's token file (``token_file``, or
   ``<state dir>/copilot/<provider id>.json``) atomically with mode 0600, as
   ``{"github_token": ..., "created_at": ...}``;
4. one Copilot token exchange checks that the account has a Copilot subscription.

The token is never printed. ``LLMGW_GITHUB_URL`` / ``LLMGW_GITHUB_API_URL`` point the flow elsewhere (tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from llmgw_common.files import write_atomically

if TYPE_CHECKING:
    import httpx

# the GitHub OAuth app of the Copilot editor plugins (public: the open-source clients use it too)
COPILOT_CLIENT_ID = "Iv1.b507a08c87ecfe98"
SCOPE = "read:user"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP_S = 5  # RFC 8628: each slow_down adds 5 seconds to the interval

_sleep: Callable[[float], None] = time.sleep  # tests replace it
_clock: Callable[[], float] = time.monotonic


class LoginError(Exception):
    pass


def add_arguments(copilot: argparse.ArgumentParser) -> None:
    """``llmgw copilot ...``: its sub-commands (``login``)."""
    sub = copilot.add_subparsers(dest="copilot_command", required=True)
    login = sub.add_parser("login", help="sign a copilot provider in to GitHub (device flow) and store its token")
    login.add_argument("--provider", help="the copilot provider's id (default: the config's only copilot "
                                          "provider, or 'copilot' without a config)")
    login.add_argument("--config", default=os.environ.get("LLMGW_CONFIG", "llmgw.yaml"),
                       help="config file (env LLMGW_CONFIG)")
    login.add_argument("--state-dir", default=os.environ.get("LLMGW_STATE_DIR", ".state"),
                       help="state directory; the token goes to <state-dir>/copilot/<provider>.json unless the "
                            "provider sets token_file (env LLMGW_STATE_DIR)")
    login.add_argument("--no-check", action="store_true", help="skip the Copilot token exchange after login")
    login.set_defaults(func=cmd_copilot_login)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def resolve_target(config_path: str, provider_id: str | None, state_dir: str):
    """(ProviderConfig, token path) for the provider to sign in."""
    from pydantic import ValidationError

    from llmgw_common.config import ProviderConfig, load_config
    from llmgw_edge.providers.copilot import token_path

    provider = None
    if Path(config_path).exists():
        config = load_config(config_path)
        copilots = [p for p in config.providers if p.type == "copilot"]
        if provider_id is not None:
            provider = config.provider(provider_id)
            if provider is not None and provider.type != "copilot":
                raise LoginError(f"provider {provider_id} is of type {provider.type}, not copilot")
            if provider is None:
                _err(f"note: {config_path} has no provider {provider_id} yet; its token goes to the default place")
        elif len(copilots) == 1:
            provider = copilots[0]
        elif not copilots:
            raise LoginError(f"{config_path} has no provider of type copilot: add one, or pass --provider ID "
                             "for the one you will add")
        else:
            raise LoginError("several copilot providers (" + ", ".join(p.id for p in copilots)
                             + "): choose one with --provider")
    if provider is None:  # signed in before it is configured: the default token file of that id
        try:
            provider = ProviderConfig(id=provider_id or "copilot", type="copilot", models=[{"name": "gpt-4.1"}])
        except ValidationError as exc:  # an id the config would refuse
            raise LoginError(f"--provider {provider_id!r}: {exc.errors()[0]['msg']}") from None
    return provider, token_path(provider, Path(state_dir))


def _post_json(client: httpx.Client, url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from llmgw_edge.providers.copilot import EDITOR_HEADERS

    reply = client.post(url, json=payload, headers={"accept": "application/json", **EDITOR_HEADERS})
    try:
        obj = reply.json()
    except ValueError:
        obj = None
    return reply.status_code, obj if isinstance(obj, dict) else {}


class _Waiting:
    """"waiting for approval" on stderr: redrawn in place on a terminal, a line now and then otherwise."""

    def __init__(self, stream: TextIO, deadline: float):
        self.stream = stream
        self.deadline = deadline
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = _clock()
        self.last_line = -1e9

    def tick(self) -> None:
        now = _clock()
        text = (f"waiting for approval on GitHub... {now - self.started:.0f}s "
                f"(code valid {max(0.0, self.deadline - now):.0f}s more)")
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        elif now - self.last_line >= 30:
            self.stream.write(text + "\n")
            self.last_line = now
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def device_flow(client: httpx.Client, base: str, out: TextIO | None = None, err: TextIO | None = None) -> str:
    """The GitHub OAuth token the user approves."""
    import httpx

    out = out or sys.stdout
    err = err or sys.stderr
    status, code = _post_json(client, f"{base}/login/device/code", {"client_id": COPILOT_CLIENT_ID, "scope": SCOPE})
    if status >= 400 or not code.get("device_code") or not code.get("user_code"):
        raise LoginError(f"GitHub did not start the device flow (HTTP {status}"
                         + (f": {code.get('error_description') or code.get('error')}" if code.get("error") else "")
                         + ")")
    uri = code.get("verification_uri") or "https://github.com/login/device"
    interval = float(code.get("interval") or 5)
    deadline = _clock() + float(code.get("expires_in") or 900)
    print(f"To sign in to GitHub Copilot, open {uri} and enter the code: {code['user_code']}", file=out, flush=True)
    waiting = _Waiting(err, deadline)
    try:
        while True:
            waiting.tick()
            _sleep(interval)
            if _clock() > deadline:
                raise LoginError("the code expired before it was approved; run `llmgw copilot login` again")
            try:
                status, answer = _post_json(client, f"{base}/login/oauth/access_token",
                                            {"client_id": COPILOT_CLIENT_ID, "device_code": code["device_code"],
                                             "grant_type": DEVICE_GRANT})
            except httpx.HTTPError as exc:  # a network blip: keep polling until the code expires
                _err(f"\npolling GitHub failed ({type(exc).__name__}); trying again")
                continue
            token = answer.get("access_token")
            if isinstance(token, str) and token:
                return token
            error = answer.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                new = answer.get("interval")
                interval = float(new) if isinstance(new, (int, float)) and new > interval else \
                    interval + SLOW_DOWN_STEP_S
                continue
            if error == "expired_token":
                raise LoginError("the code expired before it was approved; run `llmgw copilot login` again")
            if error == "access_denied":
                raise LoginError("the authorization was denied on GitHub")
            if error is None and status >= 500:
                continue  # GitHub having a moment
            raise LoginError(f"GitHub refused the login ({error or 'HTTP ' + str(status)}"
                             + (f": {answer['error_description']}" if answer.get("error_description") else "") + ")")
    finally:
        waiting.done()


def write_token_file(path: Path, github_token: str, private_dir: bool) -> None:
    """``{"github_token", "created_at"}`` written atomically (temp file + rename), mode 0600.

    Directories created on the way are 0700; so is the parent when ``private_dir`` (our own
    ``<state dir>/copilot``), even if it existed."""
    parent = path.parent
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for d in missing:
        os.chmod(d, 0o700)
    if private_dir:
        os.chmod(parent, 0o700)
    payload = json.dumps({"github_token": github_token,
                          "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n"
    write_atomically(path, payload, mode=0o600)


def check_copilot(client: httpx.Client, api_base: str, github_token: str) -> str:
    """One Copilot token exchange: "" when it works, else what went wrong (no token in it)."""
    import httpx

    from llmgw_edge.providers.copilot import EDITOR_HEADERS, TOKEN_EXCHANGE_PATH, github_message

    try:
        reply = client.get(api_base + TOKEN_EXCHANGE_PATH,
                           headers={"accept": "application/json", **EDITOR_HEADERS,
                                    "authorization": f"token {github_token}"})
    except httpx.HTTPError as exc:
        return f"could not reach GitHub ({type(exc).__name__})"
    if reply.status_code == 200:
        return ""
    said = github_message(reply.content)
    return f"HTTP {reply.status_code}" + (f": {said}" if said else "")


def login(provider_id: str | None, config_path: str, state_dir: str, check: bool = True,
          out: TextIO | None = None) -> int:
    import httpx

    out = out or sys.stdout
    from llmgw_common.config import ConfigError
    from llmgw_edge.providers.copilot import github_api_url, github_url

    try:
        provider, path = resolve_target(config_path, provider_id, state_dir)
    except (LoginError, ConfigError) as exc:
        _err(str(exc))
        return 2
    with httpx.Client(timeout=30.0, follow_redirects=False) as client:
        try:
            token = device_flow(client, github_url(), out=out)
        except LoginError as exc:
            _err(str(exc))
            return 1
        except httpx.HTTPError as exc:
            _err(f"could not reach GitHub ({type(exc).__name__})")
            return 1
        write_token_file(path, token, private_dir=provider.token_file is None)
        print(f"signed in: provider {provider.id}'s GitHub token saved to {path}", file=out, flush=True)
        if provider.api_key:
            _err(f"note: provider {provider.id} sets api_key, which is used instead of this token file")
        if check:
            problem = check_copilot(client, github_api_url(), token)
            if problem:
                _err(f"but this GitHub account cannot use Copilot yet ({problem}); check its Copilot subscription")
                return 1
            print("Copilot access: OK", file=out, flush=True)
    return 0


def cmd_copilot_login(args: argparse.Namespace) -> int:
    return login(args.provider, args.config, args.state_dir, check=not args.no_check)
