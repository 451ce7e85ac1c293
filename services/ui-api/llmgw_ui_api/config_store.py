"""The config file as the editor keeps it: versions, etags, the history, atomic writes.

A version is ``<UTC time>-<etag8>`` (``20250101T120000.123456Z-1a2b3c4d``): the time the content was
saved (the file's mtime, set to it), and the first 8 hex digits of its etag (SHA-256 of the file's
bytes). The current file's version is the name it gets in the history once it is replaced. A save
replaces the file atomically (a temporary file in its directory, fsync, rename, fsync of the
directory; its mode kept) and keeps the previous content as ``<state dir>/config-history/<version>.yaml``
(the last 50). Writers exclude each other with ``flock`` on the config's directory across processes
(and an asyncio lock in the process, in the routes). Everything here blocks: run it in a thread.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from llmgw_common.config_check import check_text
from llmgw_common.files import write_atomically

from .config_models import VERSION_PATTERN, HistoryReply, Problem, VersionInfo
from .config_secrets import restore_secrets

HISTORY_DIR = "config-history"
HISTORY_KEEP = 50
_VERSION_RE = re.compile(VERSION_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NEW_FILE_MODE = 0o600  # a config written where there was none (it may hold secrets)


def etag_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_name(mtime_ns: int, etag: str) -> str:
    at = _EPOCH + timedelta(microseconds=mtime_ns // 1000)
    return f"{at:%Y%m%dT%H%M%S.%fZ}-{etag[:8]}"


def version_time(version: str) -> datetime:
    return datetime.strptime(version.split("-", 1)[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)


def check(new_text: str, current_text: str | None) -> tuple[str, list[Problem]]:
    """The text to write (secrets put back) and its problems (empty: valid)."""
    restored = restore_secrets(new_text, current_text)
    problems = [Problem(path=p, message=m) for p, m in restored.problems]
    problems += parse_problems(restored.text)
    return restored.text, problems


def parse_problems(text: str) -> list[Problem]:
    """Every problem of a config text (what ``llmgw config check`` says about it too)."""
    return [Problem(path=f.path, message=f.message) for f in check_text(text).errors]


@dataclass
class FileState:
    path: Path
    data: bytes | None  # None: no file yet
    mtime_ns: int = 0
    mode: int = NEW_FILE_MODE
    uid: int | None = None
    gid: int | None = None

    @property
    def etag(self) -> str:
        return etag_of(self.data or b"")

    @property
    def version(self) -> str | None:
        return None if self.data is None else version_name(self.mtime_ns, self.etag)

    @property
    def text(self) -> str | None:
        return None if self.data is None else self.data.decode("utf-8", errors="replace")


def real_path(path: Path) -> Path:
    """The file to replace: a symlinked config is written where the link points (the link stays)."""
    return Path(os.path.realpath(path))


def read_file(path: Path) -> FileState:
    path = real_path(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return FileState(path, None)
    return FileState(path, data, st.st_mtime_ns, st.st_mode & 0o7777, st.st_uid, st.st_gid)


class DirLock:
    """``flock`` on a directory: writers of the same config in other processes wait for each other."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.fd: int | None = None

    def __enter__(self) -> DirLock:
        self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def history_dir(state_dir: Path) -> Path:
    return state_dir / HISTORY_DIR


def _history_entries(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.suffix == ".yaml" and _VERSION_RE.match(p.stem)),
                  key=lambda p: p.name)


def keep_in_history(state_dir: Path, old: FileState) -> None:
    """The replaced content as ``<version>.yaml`` (private: it may hold secrets), then the oldest beyond
    ``HISTORY_KEEP`` removed."""
    if old.data is None:
        return
    directory = history_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / f"{old.version}.yaml"
    if not target.exists():
        write_atomically(target, old.data, mode=0o600, fsync_dir=True, mtime_ns=old.mtime_ns)
    entries = _history_entries(directory)
    for stale in entries[: max(0, len(entries) - HISTORY_KEEP)]:
        try:
            stale.unlink()
        except OSError:
            pass


def _info(path: Path) -> VersionInfo:
    data = path.read_bytes()
    return VersionInfo(version=path.stem, at=version_time(path.stem), etag=etag_of(data), size=len(data))


def history(config_path: Path, state_dir: Path) -> HistoryReply:
    """The kept versions, newest first, and the file as it is now."""
    versions = [_info(p) for p in reversed(_history_entries(history_dir(state_dir)))]
    state = read_file(config_path)
    current = None
    if state.data is not None:
        current = VersionInfo(version=state.version, at=version_time(state.version), etag=state.etag,
                              size=len(state.data))
    return HistoryReply(versions=versions, current=current)


@dataclass
class SaveResult:
    status: int  # 200, 409
    etag: str
    version: str | None = None
    changed: bool = False
    problems: list[Problem] = field(default_factory=list)


def save(config_path: Path, state_dir: Path, new_text: str, if_match: list[str], restore: bool = True) -> SaveResult:
    """Under the directory lock: the etag checked, the text validated (secrets put back), the file
    replaced and the old content kept. Blocking: run it in a thread."""
    path = real_path(config_path)
    with DirLock(path.parent):
        current = read_file(path)
        if current.etag not in if_match:
            return SaveResult(409, current.etag, current.version)
        if restore:
            text, problems = check(new_text, current.text)
        else:
            text = new_text
            problems = parse_problems(text)
        if problems:
            return SaveResult(400, current.etag, current.version, problems=problems)
        data = text.encode("utf-8")
        if data == current.data:
            return SaveResult(200, current.etag, current.version, changed=False)
        now_ns = time.time_ns()
        now_ns -= now_ns % 1000  # microseconds: what a version name holds
        keep_in_history(state_dir, current)
        write_atomically(path, data, mode=current.mode, fsync_dir=True, mtime_ns=now_ns,
                         owner=(current.uid, current.gid))
        etag = etag_of(data)
        return SaveResult(200, etag, version_name(now_ns, etag), changed=True)
