"""Files that are complete or absent: every state file the gateway writes (token files, the price cache,
runtime.json, the usage insert journal) goes through ``write_atomically``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path | str, data: bytes | str, *, mode: int = 0o600, fsync: bool = True,
                     fsync_dir: bool = False, exclusive: bool = False, mtime_ns: int | None = None,
                     owner: tuple[int | None, int | None] = (None, None)) -> None:
    """``path`` holds ``data`` or what it held before, never a part of it.

    The data goes to a temporary file in the same directory (``mode``; flushed to disk unless ``fsync`` is
    False) that then takes ``path``'s place. ``fsync_dir`` makes that rename durable too (the directory is
    fsynced). ``exclusive``: only when ``path`` does not exist yet (``FileExistsError`` otherwise, ``path``
    untouched): the temporary file is hard-linked in place, so no reader sees the file empty either.
    ``mtime_ns`` stamps the file's modification time; ``owner`` (uid, gid) gives it to that owner where the
    process may (a config file edited by another user keeps its owner; otherwise it becomes ours)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes it 0600
        uid, gid = owner
        if uid is not None and (uid != os.geteuid() or gid != os.getegid()):
            try:
                os.fchown(fd, uid, gid if gid is not None else -1)
            except PermissionError:
                pass  # not ours to give away: the file becomes this process's user's, mode kept
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            if mtime_ns is not None:
                os.utime(f.fileno(), ns=(mtime_ns, mtime_ns))
            if fsync:
                os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync_dir:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
