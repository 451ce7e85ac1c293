"""llmgw_common.files.write_atomically: a file is complete or absent, with its mode, and no temporary file
is left behind, also when the write fails."""

from __future__ import annotations

import os
import stat

import pytest

from llmgw_common import files
from llmgw_common.files import write_atomically


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_replaces_the_content_with_the_mode_asked(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    write_atomically(path, '{"new": 1}', mode=0o644)
    assert path.read_text() == '{"new": 1}' and _mode(path) == 0o644
    write_atomically(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes" and _mode(path) == 0o600  # private unless asked otherwise
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "token.json"
    path.write_text("old")

    def broken(_src, _dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["token.json"]


def test_exclusive_writes_only_a_new_file(tmp_path):
    path = tmp_path / "admin.token"
    write_atomically(path, "first\n", exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomically(path, "second\n", exclusive=True)
    assert path.read_text() == "first\n" and os.listdir(tmp_path) == ["admin.token"]


def test_fsyncs_the_file_and_on_request_the_directory(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_atomically(tmp_path / "a", "x", fsync=False)
    assert synced == []
    write_atomically(tmp_path / "b", "x")
    assert len(synced) == 1
    write_atomically(tmp_path / "c", "x", fsync_dir=True)
    assert len(synced) == 3


def test_the_modification_time_and_owner_asked_for(tmp_path):
    target = tmp_path / "llmgw.yaml"
    write_atomically(target, b"a: 1\n", mode=0o640, mtime_ns=1_700_000_000_123_456_789,
                     owner=(os.geteuid(), os.getegid()))
    st = target.stat()
    assert st.st_mtime_ns == 1_700_000_000_123_456_789
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (os.geteuid(), os.getegid(), 0o640)
