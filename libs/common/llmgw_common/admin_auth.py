"""Credentials of the admin API (ui-api): where the tokens live, how they are checked, sessions, limits.

Two roles:

- ``admin``: everything. The token is ``LLMGW_ADMIN_TOKEN`` when set, else the
  one in ``<LLMGW_STATE_DIR>/admin-token``, generated on first start.
- ``readonly``: GET routes only (viewers). ``LLMGW_ADMIN_READONLY_TOKEN``, else
  ``<LLMGW_STATE_DIR>/admin-token-readonly``, generated likewise.

A generated token file is created with mode 0600 (atomically: a second process
starting at the same moment reads the first one's token), and the state
directory loses any access for "other" users. ``llmgw run`` calls
``ensure_admin_token(state_dir)`` before it starts the services and prints the
token when it was just created; the ui-api only logs where the file is.

Tokens are compared with ``hmac.compare_digest`` (both roles, always, so the
time taken does not say which one came close). Browser sessions (``SessionStore``)
are opaque random ids kept in the NATS key-value bucket ``LLMGW_SESSIONS``, only
their SHA-256 as the key, so every ui-api replica knows every session.
``brute_force.SharedFailureLimiter`` slows down guessing per client address (realm
``admin``; the edge counts gateway keys in its own realm).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping

from .files import write_atomically


Role = Literal["admin", "readonly"]
ADMIN: Role = "admin"
READONLY: Role = "readonly"

ADMIN_TOKEN_ENV = "LLMGW_ADMIN_TOKEN"
READONLY_TOKEN_ENV = "LLMGW_ADMIN_READONLY_TOKEN"
TOKEN_FILES: dict[Role, str] = {ADMIN: "admin-token", READONLY: "admin-token-readonly"}
TOKEN_ENVS: dict[Role, str] = {ADMIN: ADMIN_TOKEN_ENV, READONLY: READONLY_TOKEN_ENV}
TOKEN_PREFIXES: dict[Role, str] = {ADMIN: "llmgw-admin-", READONLY: "llmgw-view-"}
MIN_TOKEN_CHARS = 16  # a token given in the environment: at least this long
MAX_TOKEN_CHARS = 512

# the web UI's session (POST /api/login) and its CSRF defence
SESSION_COOKIE = "llmgw_session"
SESSION_COOKIE_PATH = "/api"
SESSION_TTL_S = 12 * 3600
SESSIONS_BUCKET = "LLMGW_SESSIONS"  # NATS key-value bucket shared by every ui-api replica
MAX_SESSION_BYTES = 64 * 1024 * 1024  # the bucket's bound (~300 000 sessions): logins past it are refused
SESSION_STORE_TIMEOUT_S = 5.0
CSRF_HEADER = "x-llmgw-csrf"  # required, value "1", on every state-changing call a cookie authenticates



class AdminTokenError(RuntimeError):
    """A token that cannot be used (too short, unreadable file, both roles the same)."""


def token_path(state_dir: Path | str, role: Role = ADMIN) -> Path:
    return Path(state_dir) / TOKEN_FILES[role]


def new_token(role: Role = ADMIN) -> str:
    return TOKEN_PREFIXES[role] + secrets.token_urlsafe(32)  # 256 bits


def _private_dir(directory: Path) -> None:
    """Create ``directory`` (0700) if needed; take away whatever "other" users may do in it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o007:
        try:
            os.chmod(directory, mode & ~0o007)
        except OSError as exc:
            raise AdminTokenError(f"the state dir {directory} is accessible to every user and cannot be "
                                  f"restricted ({exc}); chmod o-rwx it") from None


def _read_token(path: Path, wait_s: float = 1.0) -> str:
    """The token in ``path``; waits a moment for a file another process has just created."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise AdminTokenError(f"cannot read the admin token file {path}: {exc}") from None
        if text or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if len(text) < MIN_TOKEN_CHARS or len(text) > MAX_TOKEN_CHARS or any(c.isspace() for c in text):
        raise AdminTokenError(f"the admin token file {path} does not hold a usable token (one line of "
                              f"{MIN_TOKEN_CHARS}..{MAX_TOKEN_CHARS} characters); delete it to have a new one "
                              f"generated")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)  # readable by others: not any more
    return text


def ensure_token_file(state_dir: Path | str, role: Role = ADMIN) -> tuple[str, bool]:
    """(token, created): the token in ``<state_dir>/<file>``, generated (mode 0600) when there is none."""
    directory = Path(state_dir)
    _private_dir(directory)
    path = token_path(directory, role)
    token = new_token(role)
    try:  # exclusive: of two processes starting at once, one generates it and both read the same token
        write_atomically(path, token + "\n", mode=0o600, exclusive=True)
    except FileExistsError:
        return _read_token(path), False
    return token, True


def _from_env(role: Role, environ: Mapping[str, str]) -> str | None:
    value = (environ.get(TOKEN_ENVS[role]) or "").strip()
    if not value:
        return None
    if len(value) < MIN_TOKEN_CHARS or len(value) > MAX_TOKEN_CHARS or any(c.isspace() for c in value):
        raise AdminTokenError(f"{TOKEN_ENVS[role]} must be {MIN_TOKEN_CHARS}..{MAX_TOKEN_CHARS} characters "
                              f"without spaces (unset it to have a token generated)")
    return value


def ensure_token(state_dir: Path | str, role: Role = ADMIN,
                 environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(token, created) of ``role``: from its environment variable when set (never written anywhere),
    else from its file in the state dir, generated on first use."""
    value = _from_env(role, os.environ if environ is None else environ)
    if value is not None:
        return value, False
    return ensure_token_file(state_dir, role)


def ensure_admin_token(state_dir: Path | str, environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(token, created): what ``llmgw run`` calls before starting the services; print the token when
    ``created`` (it was just generated into ``<state_dir>/admin-token``; from then on it is only there)."""
    return ensure_token(state_dir, ADMIN, environ)


@dataclass(frozen=True)
class AdminCredentials:
    admin: str
    readonly: str
    sources: dict  # role -> "env" | path of its file (what ui-api logs; never the token)

    @classmethod
    def load(cls, state_dir: Path | str, environ: Mapping[str, str] | None = None) -> AdminCredentials:
        env = os.environ if environ is None else environ
        tokens, sources = {}, {}
        for role in (ADMIN, READONLY):
            tokens[role], _created = ensure_token(state_dir, role, env)
            sources[role] = TOKEN_ENVS[role] if _from_env(role, env) else str(token_path(state_dir, role))
        if hmac.compare_digest(tokens[ADMIN], tokens[READONLY]):
            raise AdminTokenError("the admin and the read-only token must differ")
        return cls(tokens[ADMIN], tokens[READONLY], sources)

    def role_of(self, token: str) -> Role | None:
        """The role ``token`` grants, or None; both comparisons always run, each timing-safe."""
        presented = token.encode()
        is_admin = hmac.compare_digest(presented, self.admin.encode())
        is_readonly = hmac.compare_digest(presented, self.readonly.encode())
        return ADMIN if is_admin else READONLY if is_readonly else None


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


@dataclass
class Session:
    role: Role
    expires_at: float  # epoch seconds


class SessionStoreUnavailable(RuntimeError):
    """The session bucket did not answer (NATS away): no session can be checked, created or ended."""


class SessionStore:
    """Browser sessions in the JetStream key-value bucket ``LLMGW_SESSIONS``, shared by every ui-api replica: a
    login on one is valid on all, a logout on one ends the session everywhere, a restart logs nobody out.

    A session id is an opaque 256-bit random value that only the browser holds; the bucket stores its
    SHA-256 (the key) with the role and the expiry. The bucket's max age is the session lifetime, so the
    server forgets a session once it is over; a session read back is checked against its expiry too.
    Each check is one key-value get (a NATS round trip, the admin API only): read from the bucket itself, a
    logout takes effect at once on every replica, with no watch to lag behind.
    """

    def __init__(self, kv, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.time):
        self._kv = kv
        self.ttl_s = ttl_s
        self.clock = clock  # epoch seconds (tests move it)

    @classmethod
    async def open(cls, js, ttl_s: float = SESSION_TTL_S) -> SessionStore:
        """The bucket, created on first use (by whichever replica starts first)."""
        from nats.js.api import KeyValueConfig

        from .jetstream import ensure_bucket

        kv = await ensure_bucket(js, KeyValueConfig(
            bucket=SESSIONS_BUCKET, history=1, ttl=ttl_s, max_bytes=MAX_SESSION_BYTES,
            description="llmgw admin API login sessions (SHA-256 of the id -> role, expiry)"))
        return cls(kv, ttl_s)

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    async def create(self, role: Role) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(role, self.clock() + self.ttl_s)
        value = json.dumps({"role": role, "expires_at": session.expires_at}).encode()
        await self._call(self._kv.put(self._key(session_id), value))
        return session_id, session

    async def get(self, session_id: str) -> Session | None:
        from nats.js.errors import KeyNotFoundError

        if not session_id or len(session_id) > 128:
            return None
        try:
            entry = await self._call(self._kv.get(self._key(session_id)))
        except KeyNotFoundError:  # never was, ended (a delete marker) or forgotten after its lifetime
            return None
        try:
            stored = json.loads(entry.value)
            session = Session(stored["role"], float(stored["expires_at"]))
        except (TypeError, ValueError, KeyError):
            return None  # unreadable: no session (fail closed)
        if session.role not in (ADMIN, READONLY) or session.expires_at <= self.clock():
            return None
        return session

    async def drop(self, session_id: str) -> None:
        await self._call(self._kv.delete(self._key(session_id)))

    @staticmethod
    async def _call(operation):
        """A bucket operation; NATS away (or the bucket full) is ``SessionStoreUnavailable``."""
        from nats.errors import Error as NatsError
        from nats.js.errors import KeyNotFoundError

        try:
            return await asyncio.wait_for(operation, SESSION_STORE_TIMEOUT_S)
        except KeyNotFoundError:
            raise
        except (NatsError, TimeoutError) as exc:
            raise SessionStoreUnavailable(f"the session store (NATS bucket {SESSIONS_BUCKET}) failed: "
                                          f"{type(exc).__name__}") from None
