"""Files that are complete or absent: every state file the gateway writes (token files, the price cache,
runtime.json, the usage insert journal) goes through ``write_atomically``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path | str, data: bytes | str, *, mode: int = 0o600, fsync: bool = True,
                     fsync_dir: bool = False, exclusive: bool = False) -> None:
    """``path`` holds ``data`` or what it held before, never a part of it.

    The data goes to a temporary file in the same directory (``mode``; flushed to disk unless ``fsync`` is
    False) that then takes ``path``'s place. ``fsync_dir`` makes that rename durable too (the directory is
    fsynced). ``exclusive``: only when ``path`` does not exist yet (``FileExistsError`` otherwise, ``path``
    untouched): the temporary file is hard-linked in place, so no reader sees the file empty either."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
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
