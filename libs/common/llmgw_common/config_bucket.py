"""Where the gateway's config lives: one key of a JetStream key-value bucket, watched by every process.

The bucket ``LLMGW_CONFIG`` holds the config YAML text exactly as written (comments, order, ``${VAR}``
references: a secret is resolved in each service's own environment, never stored resolved) under the key
``gateway.yaml``. Its revision numbers are the config revisions; its history (``HISTORY`` entries) is the
editor's history and what a rollback picks from. Nothing reads a file another process writes.

Seeding: while the key is absent, the first process to start (a service, ``llmgw run``, ``llmgw config
push``) stores the YAML file (``LLMGW_CONFIG``) with a KV *create*, which fails when the key exists: two
replicas starting together store it once. Afterwards the file is only read by ``llmgw config push`` and
written by ``llmgw config pull``.

``ConfigFollower`` is a process's view (the ``KeyMirror`` of the keys bucket is the model): it loads the
current revision at start, then applies each new one live, keeping the running config when a revision is
invalid.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from .config import ConfigError, GatewayConfig, parse_config_text

log = logging.getLogger("llmgw.config")

CONFIG_BUCKET = "LLMGW_CONFIG"
CONFIG_KEY = "gateway.yaml"
HISTORY = 50  # revisions kept: the editor's history (JetStream allows at most 64)
STOP_WAIT_S = 2.0


@dataclass(frozen=True)
class Revision:
    revision: int  # the bucket's revision of the key; 0: nothing stored yet (defaults)
    text: str
    at: datetime | None = None  # when it was written


def _at(created) -> datetime | None:
    if isinstance(created, datetime):
        return created
    if isinstance(created, (int, float)) and created > 0:  # nanoseconds since the epoch
        return datetime.fromtimestamp(created / 1e9, timezone.utc)
    return None


def _revision(entry) -> Revision:
    return Revision(entry.revision, (entry.value or b"").decode("utf-8", errors="replace"), _at(entry.created))


async def open_bucket(js, create: bool = True):
    """The config bucket; created when missing and ``create`` (else None when there is none)."""
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError

    from .jetstream import ensure_bucket

    if not create:
        try:
            return await js.key_value(CONFIG_BUCKET)
        except BucketNotFoundError:
            return None
    return await ensure_bucket(js, KeyValueConfig(bucket=CONFIG_BUCKET, history=HISTORY,
                                                  description="llmgw gateway config (YAML text)"))


async def current(kv) -> Revision | None:
    """The config's current revision, or None when nothing is stored (or it was deleted)."""
    from nats.js.errors import KeyNotFoundError

    try:
        entry = await kv.get(CONFIG_KEY)
    except KeyNotFoundError:  # KeyDeletedError is one too
        return None
    if entry.value is None:
        return None
    return _revision(entry)


async def history(kv) -> list[Revision]:
    """Every kept revision, newest first (deletions left out)."""
    from nats.js.errors import NoKeysError

    try:
        entries = await kv.history(CONFIG_KEY)
    except NoKeysError:
        return []
    kept = [_revision(e) for e in entries if e.operation not in ("DEL", "PURGE") and e.value is not None]
    return sorted(kept, key=lambda r: r.revision, reverse=True)


async def seed(kv, text: str) -> int | None:
    """Store ``text`` as the first revision; None when a config is stored already (nothing changes)."""
    from nats.js.errors import KeyWrongLastSequenceError

    try:
        return await kv.create(CONFIG_KEY, text.encode("utf-8"))
    except KeyWrongLastSequenceError:
        return None


async def seed_from_file(kv, path: os.PathLike[str] | str) -> None:
    """The seed rule: while the bucket holds no config, the YAML file (when there is one) becomes revision
    1. A file that is not valid YAML config is not stored (the services would refuse it anyway)."""
    p = Path(path)
    if await current(kv) is not None or not p.exists():
        return
    text = await asyncio.to_thread(p.read_text, encoding="utf-8")
    parse_config_text(text, str(p))  # ConfigError: the caller says what is wrong
    revision = await seed(kv, text)
    if revision is not None:
        log.info("config bucket seeded from %s (revision %d)", p, revision)


async def write(kv, text: str, last: int) -> int:
    """Store ``text`` as a new revision if the current one is still ``last`` (0: none stored);
    ``KeyWrongLastSequenceError`` when another writer came first."""
    if last == 0:
        return await kv.create(CONFIG_KEY, text.encode("utf-8"))
    return await kv.update(CONFIG_KEY, text.encode("utf-8"), last=last)


ConfigListener = Callable[[GatewayConfig], Awaitable[None] | None]


class ConfigFollower:
    """A process's running config, kept to the bucket's latest valid revision by a watch (restarted
    whenever it ends). ``start`` seeds the bucket when empty and loads the current revision; ``follow``
    then parses each later one and hands it to the listeners when valid (an invalid one is logged; the
    running config stays). ``revision`` is the revision running (0: none stored, the defaults)."""

    def __init__(self, on_revision: Callable[[int], None] | None = None) -> None:
        self.config = GatewayConfig()
        self.revision = 0
        self.latest = 0  # the newest revision seen, applied or not
        self._js = None
        self._listeners: list[ConfigListener] = []
        self._on_revision = on_revision
        self._task: asyncio.Task | None = None

    async def start(self, js, seed_path: os.PathLike[str] | str | None = None) -> GatewayConfig:
        """Seed the bucket (when empty) from ``seed_path``, load the current config and return it. An
        invalid stored config at start raises ``ConfigError`` (there is no running config to keep)."""
        kv = await open_bucket(js)
        if seed_path is not None:
            await seed_from_file(kv, seed_path)
        stored = await current(kv)
        if stored is not None:
            self._set(parse_config_text(stored.text, f"{CONFIG_BUCKET} revision {stored.revision}"), stored.revision)
        elif self._on_revision is not None:
            self._on_revision(0)
        self._js = js
        return self.config

    @property
    def started(self) -> bool:
        return self._js is not None

    def follow(self, listeners: Sequence[ConfigListener] = ()) -> None:
        """Watch the bucket from now on and hand each new valid config to ``listeners`` in order. The watch
        begins with the latest revision, so one written since ``start`` is applied too."""
        self._listeners.extend(listeners)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow(self._js), name="config-follower")

    async def answer_revisions(self, nc, service: str, instance: str):
        """Answer ``llmgw.config.revisions`` (every process, no queue group) with the revision running:
        how ui-api sees whether all replicas run the latest one. Returns the subscription."""
        from . import subjects
        from .messages import ConfigRevision

        async def answer(msg) -> None:
            if msg.reply:
                await msg.respond(ConfigRevision(service=service, instance=instance, revision=self.revision,
                                                 latest=self.latest).encode())

        return await nc.subscribe(subjects.CONFIG_REVISIONS, cb=answer)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # bounded: a watch cancelled while it was being set up may not end promptly (nothing waits on it)
            await asyncio.wait({self._task}, timeout=STOP_WAIT_S)

    def _set(self, config: GatewayConfig, revision: int) -> None:
        self.config, self.revision = config, revision
        self.latest = max(self.latest, revision)
        if self._on_revision is not None:
            self._on_revision(revision)

    async def _follow(self, js) -> None:
        delay = 0.5
        while True:
            try:
                kv = await open_bucket(js)
                # not stopped when cancelled: the connection's drain ends its subscription, and stopping it
                # from a cancelled task can keep that task (and the event loop's close) waiting
                watcher = await kv.watch(CONFIG_KEY)
                async for entry in watcher:
                    if entry is not None and entry.value and entry.operation not in ("DEL", "PURGE"):
                        await self._apply(entry.revision, entry.value.decode("utf-8", errors="replace"))
                    delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: the running config stays, retry
                log.warning("config watch interrupted (%s); retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _apply(self, revision: int, text: str) -> None:
        if revision <= self.revision:
            return  # the one loaded at start (or older): nothing new
        self.latest = max(self.latest, revision)
        try:
            config = parse_config_text(text, f"{CONFIG_BUCKET} revision {revision}")
        except ConfigError as exc:
            log.error("config revision %d ignored, revision %d stays: %s", revision, self.revision, exc)
            return
        self._set(config, revision)
        for listener in self._listeners:
            try:
                result = listener(config)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one listener's failure must not keep the others on the old config
                log.exception("applying config revision %d failed in %s", revision,
                              getattr(listener, "__qualname__", listener))
        log.info("config revision %d applied", revision)
