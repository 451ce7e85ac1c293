"""The config editor: read, validate, save and roll back the gateway's YAML file.

- ``GET /api/config``: the file as it is on disk (comments, order and all) with its literal secrets
  masked, its ``etag`` (SHA-256 of the file's bytes), its ``version`` and the masked config as data.
- ``POST /api/config/validate``: ``{"yaml"}`` → the problems at their field paths and a unified diff
  against the running file (secrets masked on both sides). No side effects.
- ``PUT /api/config``: ``{"yaml"}`` with ``If-Match: <etag>`` (428 without it, 409 when the file
  changed meanwhile, 400 with ``problems`` when invalid: nothing changes). The file is replaced
  atomically (a temporary file in its directory, fsync, rename, fsync of the directory; its mode
  kept), the previous content kept as ``<state dir>/config-history/<version>.yaml`` (the last 50), and
  ``llmgw.config.changed`` announced: every service reloads the file live.
- ``GET /api/config/history``, ``POST /api/config/rollback`` (``{"version"}`` + ``If-Match``): the
  kept versions, newest first; a rollback saves that version's content like a PUT.

Secrets: provider ``api_key`` literals and ``headers`` values (and credentials in
``pricing.source_url``) are shown as ``"********"``; ``${VAR}`` references as they are. In a saved
YAML a masked value means "the secret this provider (matched by id) has now": it is put back from the
file before validation, so the editor never sees a secret and never loses one. Comment lines that
mention an ``api_key`` are masked the same way and restored when they come back unchanged.

A version is ``<UTC time>-<etag8>`` (``20250101T120000.123456Z-1a2b3c4d``): the time the content was
saved (the file's mtime, set to it), and the first 8 hex digits of its etag. The current file's version
is the name it gets in the history once it is replaced. Writers exclude each other with an asyncio
lock in the process and ``flock`` on the config's directory across processes.
"""

from __future__ import annotations

import asyncio
import difflib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml
from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from llmgw_common import subjects
from llmgw_common.config import _ENV_REF, SECRET_MASK, mask_url, masked, parse_config_text
from llmgw_common.config_check import check_text

from .errors import MAX_BODY_BYTES, ErrorBody, error_body

log = logging.getLogger("llmgw.ui-api")

router = APIRouter()

HISTORY_DIR = "config-history"
HISTORY_KEEP = 50
VERSION_PATTERN = r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}$"
_VERSION_RE = re.compile(VERSION_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MASKED_SCALAR = json.dumps(SECRET_MASK)  # "********": quoted, a plain * would start a YAML alias
NEW_FILE_MODE = 0o600  # a config written where there was none (it may hold secrets)


# ---- API models ------------------------------------------------------------------------------------

class Problem(BaseModel):
    path: str = Field(description="field path (providers[1].base_url), 'line L, column C' for YAML syntax, "
                                  "'' for the whole document")
    message: str


class ConfigView(BaseModel):
    yaml: str = Field(description="the file as on disk, literal secrets as \"********\"")
    etag: str = Field(description="SHA-256 (hex) of the file's bytes: send it as If-Match to save")
    path: str
    masked: dict[str, Any] | None = Field(description="the parsed config, secrets masked (null: the file is invalid)")
    config: dict[str, Any] | None = Field(default=None, description="the same as masked (the earlier name)")
    version: str | None = Field(default=None, description="the file's version (null: no file yet)")
    exists: bool = True
    problems: list[Problem] = Field(default_factory=list, description="what is wrong with the file on disk")


class ConfigText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    yaml: str = Field(max_length=MAX_BODY_BYTES, description="the whole file; \"********\" keeps a current secret")


class ValidateReply(BaseModel):
    ok: bool
    problems: list[Problem]
    diff: str = Field(description="unified diff, running file → this text, secrets masked on both sides")


class SaveReply(BaseModel):
    etag: str
    changed: bool = Field(description="false: the text was the file's own, nothing was written")
    version: str
    announced: bool = Field(default=True, description="llmgw.config.changed was published (false: NATS is "
                                                      "away; services pick the file up at their next reload)")


class ProblemsResponse(BaseModel):
    """A 400 of PUT /api/config and rollback: the error shape plus every problem found."""

    error: ErrorBody
    problems: list[Problem] = Field(default_factory=list, description="empty when the body itself was refused")


class VersionInfo(BaseModel):
    version: str
    at: datetime
    etag: str
    size: int


class HistoryReply(BaseModel):
    versions: list[VersionInfo] = Field(description="kept previous versions, newest first")
    current: VersionInfo | None = Field(default=None, description="the file as it is now")


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=VERSION_PATTERN, max_length=64)


# ---- versions, etags ---------------------------------------------------------------------------------

def etag_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_name(mtime_ns: int, etag: str) -> str:
    at = _EPOCH + timedelta(microseconds=mtime_ns // 1000)
    return f"{at:%Y%m%dT%H%M%S.%fZ}-{etag[:8]}"


def version_time(version: str) -> datetime:
    return datetime.strptime(version.split("-", 1)[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)


def _if_match_etags(value: str) -> list[str]:
    """The entity tags of an If-Match header (quoted or not, W/ ignored)."""
    out = []
    for part in value.split(","):
        tag = part.strip().removeprefix("W/").strip().strip('"').lower()
        if tag:
            out.append(tag)
    return out


# ---- secrets in the YAML text ------------------------------------------------------------------------

@dataclass
class SecretSite:
    """One place of the document that may hold a secret: its field path, the provider it belongs to,
    what it is, and its YAML node."""

    path: str
    provider: str | None  # the provider's id (None: outside providers, or no id)
    key: tuple[str, ...]  # ("api_key",) | ("headers", name) | ("source_url",)
    node: yaml.Node

    def shown(self, value: str) -> bool:
        """Whether the value here is no secret (an ${ENV} reference, a URL without credentials)."""
        if self.key[0] == "source_url":
            return mask_url(value) == value
        return bool(_ENV_REF.match(value))

    def masked_value(self, value: str) -> str:
        return mask_url(value) if self.key[0] == "source_url" else SECRET_MASK


def _scalar(node: yaml.Node | None) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _pairs(mapping: yaml.MappingNode, depth: int = 0) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    """A mapping's key/value nodes, those merged in by ``<<`` too."""
    for key, value in mapping.value:
        if key.tag == "tag:yaml.org,2002:merge" and depth < 8:
            for merged in (value.value if isinstance(value, yaml.SequenceNode) else [value]):
                if isinstance(merged, yaml.MappingNode):
                    yield from _pairs(merged, depth + 1)
        else:
            yield key, value


def _scalars(node: yaml.Node, depth: int = 0) -> Iterator[yaml.ScalarNode]:
    if isinstance(node, yaml.ScalarNode):
        yield node
    elif depth < 16 and isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _scalars(item, depth + 1)
    elif depth < 16 and isinstance(node, yaml.MappingNode):
        for _, value in _pairs(node):
            yield from _scalars(value, depth + 1)


def secret_sites(root: yaml.Node | None) -> list[SecretSite]:
    """Every secret-bearing scalar of a composed config document."""
    sites: list[SecretSite] = []
    if not isinstance(root, yaml.MappingNode):
        return sites
    for key, value in _pairs(root):
        name = _scalar(key)
        if name == "providers" and isinstance(value, yaml.SequenceNode):
            for i, provider in enumerate(value.value):
                if not isinstance(provider, yaml.MappingNode):
                    continue
                pid = next((_scalar(v) for k, v in _pairs(provider) if _scalar(k) == "id"), None)
                for pkey, pvalue in _pairs(provider):
                    field_name = _scalar(pkey)
                    if field_name == "api_key":
                        for node in _scalars(pvalue):
                            sites.append(SecretSite(f"providers[{i}].api_key", pid, ("api_key",), node))
                    elif field_name == "headers":
                        if isinstance(pvalue, yaml.MappingNode):
                            for hkey, hvalue in _pairs(pvalue):
                                header = str(_scalar(hkey))
                                for node in _scalars(hvalue):
                                    sites.append(SecretSite(f"providers[{i}].headers.{header}", pid,
                                                            ("headers", header), node))
                        else:
                            for node in _scalars(pvalue):
                                sites.append(SecretSite(f"providers[{i}].headers", pid, ("headers", ""), node))
        elif name == "pricing" and isinstance(value, yaml.MappingNode):
            for pkey, pvalue in _pairs(value):
                if _scalar(pkey) == "source_url":
                    for node in _scalars(pvalue):
                        sites.append(SecretSite("pricing.source_url", None, ("source_url",), node))
    return sites


def _compose(text: str) -> yaml.Node | None:
    """The document's node tree; raises yaml.YAMLError when it is no single YAML document."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def _value_span(text: str, node: yaml.Node) -> tuple[int, int]:
    """Where the scalar itself is written: the node's span without its anchor (&a) and tag (!!str)."""
    start, end = node.start_mark.index, node.end_mark.index
    while start < end and text[start] in "&!":
        while start < end and not text[start].isspace():
            start += 1
        while start < end and text[start].isspace():
            start += 1
    return start, end


def _replace_spans(text: str, replacements: dict[tuple[int, int], str]) -> str:
    out, last = [], 0
    for (start, end), new in sorted(replacements.items()):
        if start < last:  # overlapping (cannot happen for distinct scalars): keep the first
            continue
        out += [text[last:start], new]
        last = end
    out.append(text[last:])
    return "".join(out)


# fallback for text that is no YAML document at all (a hand edit gone wrong), and for comment lines
_HEADERS_LINE = re.compile(r"""^(\s*(?:-\s+)?["']?headers["']?\s*:)(.*)$""")
_KEY_VALUE_LINE = re.compile(r"""^(\s*(?:-\s+)?[^\s:#][^:#]*?\s*:\s+)(\S.*)$""")
_FLOW_HEADERS = re.compile(r"""(\bheaders["']?\s*:\s*\{)([^}]*)""")
_FLOW_VALUE = re.compile(r"""(:\s*)("[^"]*"|'[^']*'|[^,}\s][^,}]*)""")


def _value_end(content: str, start: int, flow: bool) -> int:
    """Where the scalar written at ``start`` ends: a quoted one at its closing quote, a plain one before
    a comment (`` #``), the end of the line, or in flow context a ``,``, ``}`` or ``]``."""
    if start < len(content) and content[start] in "\"'":
        quote = content[start]
        n = start + 1
        while n < len(content):
            if content[n] == "\\" and quote == '"':
                n += 2
                continue
            if content[n] == quote:
                return n + 1
            n += 1
        return len(content)
    n = start
    while n < len(content):
        if content[n] == "#" and n > start and content[n - 1].isspace():
            break
        if flow and content[n] in ",}]":
            break
        n += 1
    while n > start and content[n - 1].isspace():
        n -= 1
    return n


def _mask_key(content: str, key: str, masked_as) -> str:
    """Every ``key: value`` in a line with ``masked_as(value)`` (None: left as it is)."""
    out, last = [], 0
    for m in re.finditer(rf"""\b{key}["']?[ \t]*:[ \t]*""", content):
        if m.start() < last:
            continue
        before = content[: m.start()]
        flow = before.count("{") + before.count("[") > before.count("}") + before.count("]")
        end = _value_end(content, m.end(), flow)
        value = content[m.end():end].strip().strip("'\"")
        if not value:
            continue
        new = masked_as(value)
        if new is not None:
            out += [content[last:m.end()], new]
            last = end
    out.append(content[last:])
    return "".join(out)


def _api_key_masked(value: str) -> str | None:
    return None if _ENV_REF.match(value) else MASKED_SCALAR


def _url_masked(value: str) -> str | None:
    return None if mask_url(value) == value else json.dumps(mask_url(value))


def _mask_content(content: str, headers_col: int | None) -> tuple[str, int | None]:
    """One line's text masked; ``headers_col``: the column of a ``headers:`` key whose block we are in."""
    stripped = content.lstrip()
    indent = len(content) - len(stripped)
    if headers_col is not None:
        if not stripped or stripped.startswith("#"):
            return content, headers_col
        if indent > headers_col:
            m = _KEY_VALUE_LINE.match(content)
            return (m.group(1) + MASKED_SCALAR if m else content), headers_col
        headers_col = None
    content = _mask_key(_mask_key(content, "api_key", _api_key_masked), "source_url", _url_masked)
    m = _HEADERS_LINE.match(content)
    if m and (not m.group(2).strip() or m.group(2).strip().startswith("#")):
        headers_col = len(m.group(1)) - len(m.group(1).lstrip(" -"))
    return _FLOW_HEADERS.sub(lambda h: h.group(1) + _FLOW_VALUE.sub(lambda v: v.group(1) + MASKED_SCALAR,
                                                                     h.group(2)), content), headers_col


def _mask_lines(text: str, comments_only: bool) -> str:
    """Masks ``api_key: <literal>`` anywhere in a line and the values under a ``headers:`` key, line by
    line; with ``comments_only``, only in comment lines (the YAML's own values are masked by node)."""
    lines = text.splitlines(keepends=True)
    headers_col: int | None = None
    for n, line in enumerate(lines):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        prefix, content = "", body
        if comments_only:
            stripped = body.lstrip()
            if not stripped.startswith("#"):
                headers_col = None
                continue
            cut = len(body) - len(stripped) + 1
            prefix, content = body[:cut], body[cut:]
        content, headers_col = _mask_content(content, headers_col)
        lines[n] = prefix + content + end
    return "".join(lines)


def mask_text(text: str) -> str:
    """The YAML text with every literal secret replaced by ``"********"``, everything else as it is."""
    try:
        root = _compose(text)
    except yaml.YAMLError:
        return _mask_lines(text, comments_only=False)
    replacements: dict[tuple[int, int], str] = {}
    for site in secret_sites(root):
        value = site.node.value
        if value == SECRET_MASK or site.shown(value):
            continue
        replacements[_value_span(text, site.node)] = json.dumps(site.masked_value(value), ensure_ascii=False)
    return _mask_lines(_replace_spans(text, replacements), comments_only=True)


@dataclass
class Restored:
    text: str
    problems: list[tuple[str, str]] = field(default_factory=list)


def restore_secrets(new_text: str, current_text: str | None) -> Restored:
    """``new_text`` with each masked value put back from ``current_text`` (same provider id, same field);
    a mask with nothing to put back is a problem at its path. Comment lines that come back masked get
    their original text back."""
    try:
        new_root = _compose(new_text)
    except yaml.YAMLError:
        return Restored(new_text)  # the parser reports it
    current: dict[tuple[str | None, tuple[str, ...]], tuple[str, yaml.Node]] = {}
    current_comments: dict[str, str] = {}
    if current_text is not None:
        try:
            current_root = _compose(current_text)
        except yaml.YAMLError:
            current_root = None
        for site in secret_sites(current_root):
            current.setdefault((site.provider, site.key), (current_text, site.node))
        masked_lines = mask_text(current_text).splitlines(keepends=True)
        original_lines = current_text.splitlines(keepends=True)
        if len(masked_lines) == len(original_lines):
            for shown, original in zip(masked_lines, original_lines):
                if shown != original and shown.lstrip().startswith("#"):
                    current_comments.setdefault(shown.rstrip("\r\n"), original.rstrip("\r\n"))
    replacements: dict[tuple[int, int], str] = {}
    problems: list[tuple[str, str]] = []
    for site in secret_sites(new_root):
        value = site.node.value
        if SECRET_MASK not in value if site.key[0] == "source_url" else value != SECRET_MASK:
            continue  # no mask here: the value as typed
        found = current.get((site.provider, site.key))
        if found is not None and site.key[0] == "source_url" and site.masked_value(found[1].value) != value:
            found = None  # not the running URL as it was shown
        if found is None:
            if site.key[0] == "source_url":
                message = ("a masked URL keeps the running one, but the running config has no such URL: type "
                           "the whole URL")
            else:
                who = f"provider {site.provider!r}" if site.provider else "this provider (it has no id)"
                message = (f"{SECRET_MASK} keeps the current secret, but {who} has none in the running config: "
                           "type the value (or an ${ENV_VAR} reference)")
            problems.append((site.path, message))
            continue
        source, node = found
        start, end = _value_span(source, node)
        written = source[start:end]
        if "\n" in written or getattr(node, "style", None) in ("|", ">"):
            written = json.dumps(node.value, ensure_ascii=False)
        replacements[_value_span(new_text, site.node)] = written
    text = _replace_spans(new_text, replacements)
    if current_comments:
        lines = text.splitlines(keepends=True)
        for n, line in enumerate(lines):
            body = line.rstrip("\r\n")
            if body in current_comments:
                lines[n] = current_comments[body] + line[len(body):]
        text = "".join(lines)
    return Restored(text, problems)


def check(new_text: str, current_text: str | None) -> tuple[str, list[Problem]]:
    """The text to write (secrets put back) and its problems (empty: valid)."""
    restored = restore_secrets(new_text, current_text)
    problems = [Problem(path=p, message=m) for p, m in restored.problems]
    problems += parse_problems(restored.text)
    return restored.text, problems


def parse_problems(text: str) -> list[Problem]:
    """Every problem of a config text (what ``llmgw config check`` says about it too)."""
    return [Problem(path=f.path, message=f.message) for f in check_text(text).errors]


def diff_text(current_text: str, new_text: str) -> str:
    before = mask_text(current_text).splitlines(keepends=True)
    after = mask_text(new_text).splitlines(keepends=True)
    lines = []
    for line in difflib.unified_diff(before, after, fromfile="running", tofile="edited"):
        lines.append(line if line.endswith("\n") else line + "\n")
    return "".join(lines)


# ---- the file -----------------------------------------------------------------------------------------

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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int, mtime_ns: int | None = None,
                     owner: tuple[int | None, int | None] = (None, None)) -> None:
    """``path`` holds ``data`` or what it held before, never a mix: a temporary file in the same
    directory (mode ``mode``, fsynced), renamed over it, then the directory fsynced."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        uid, gid = owner
        if uid is not None and (uid != os.geteuid() or gid != os.getegid()):
            try:
                os.fchown(fd, uid, gid if gid is not None else -1)
            except PermissionError:
                pass  # not ours to give away: the file becomes the ui-api user's, mode kept
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mtime_ns is not None:
                os.utime(f.fileno(), ns=(mtime_ns, mtime_ns))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


class DirLock:
    """``flock`` on a directory: writers of the same config in other processes wait for each other."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.fd: int | None = None

    def __enter__(self) -> "DirLock":
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
        write_atomically(target, old.data, 0o600, old.mtime_ns)
    entries = _history_entries(directory)
    for stale in entries[: max(0, len(entries) - HISTORY_KEEP)]:
        try:
            stale.unlink()
        except OSError:
            pass


def _info(path: Path) -> VersionInfo:
    data = path.read_bytes()
    return VersionInfo(version=path.stem, at=version_time(path.stem), etag=etag_of(data), size=len(data))


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
        write_atomically(path, data, current.mode, now_ns, (current.uid, current.gid))
        etag = etag_of(data)
        return SaveResult(200, etag, version_name(now_ns, etag), changed=True)


# ---- routes ---------------------------------------------------------------------------------------------

def _lock(request: Request) -> asyncio.Lock:
    lock = getattr(request.app.state, "config_write_lock", None)
    if lock is None:
        lock = request.app.state.config_write_lock = asyncio.Lock()
    return lock


def _problems_response(message: str, problems: list[Problem]) -> JSONResponse:
    body = error_body(400, message, "invalid_config")
    body["problems"] = [p.model_dump() for p in problems]
    return JSONResponse(body, status_code=400)


def _require_if_match(if_match: str | None) -> list[str]:
    if if_match is None or not if_match.strip():
        raise HTTPException(428, "the header If-Match: <etag> is required (the etag GET /api/config gave): "
                                 "it keeps two editors from overwriting each other")
    return _if_match_etags(if_match)


async def _announce(request: Request, etag: str, version: str) -> bool:
    nc = request.app.state.nc
    try:
        await nc.publish(subjects.CONFIG_CHANGED, json.dumps({"etag": etag, "version": version}).encode())
        await nc.flush(timeout=2)
        return True
    except Exception as exc:  # noqa: BLE001 - the file is saved; a service reloads at its next announcement
        log.warning("config saved as %s but llmgw.config.changed could not be published: %s", version,
                    type(exc).__name__)
        return False


async def _save(request: Request, text: str, if_match: str | None, restore: bool, what: str):
    tags = _require_if_match(if_match)
    settings = request.app.state.settings
    async with _lock(request):
        try:
            result = await asyncio.to_thread(save, settings.config_path, settings.state_dir, text, tags, restore)
        except OSError as exc:
            log.error("cannot write the config file %s: %s", settings.config_path, exc)
            hint = (": it is a mount point of its own (a single-file bind mount) and cannot be replaced atomically; "
                    "mount its directory instead") if exc.errno in (errno.EBUSY, errno.EXDEV) else ""
            raise HTTPException(500, f"cannot write the config file ({exc.strerror or type(exc).__name__}){hint}"
                                ) from None
    if result.status == 409:
        return JSONResponse(error_body(409, "the config file changed since it was read (its etag is now "
                                            f"{result.etag}): reload it and apply your change again", "conflict"),
                            status_code=409, headers={"ETag": f'"{result.etag}"'})
    if result.status == 400:
        return _problems_response("invalid config, nothing changed: " + "; ".join(
            f"{p.path or '<root>'}: {p.message}" for p in result.problems[:5]), result.problems)
    announced = True
    if result.changed:
        log.info("config %s: version %s (etag %s)", what, result.version, result.etag[:8])
        announced = await _announce(request, result.etag, result.version or "")
    reply = SaveReply(etag=result.etag, changed=result.changed, version=result.version or "", announced=announced)
    return JSONResponse(reply.model_dump(mode="json"), headers={"ETag": f'"{result.etag}"'})


ERRORS_400 = {400: {"model": ProblemsResponse, "description": "invalid config (problems at field paths); "
                                                              "or a bad request"}}


@router.get("/api/config", response_model=ConfigView)
async def get_config(request: Request):
    """The config file as text (literal secrets masked), its etag and version, and the parsed config."""
    path = request.app.state.settings.config_path
    state = await asyncio.to_thread(read_file, path)
    text = state.text or ""
    problems = parse_problems(text)
    data = None if problems else masked(parse_config_text(text, str(path)))
    view = ConfigView(yaml=mask_text(text), etag=state.etag, path=str(path), masked=data, config=data,
                      version=state.version, exists=state.data is not None, problems=problems)
    return JSONResponse(view.model_dump(mode="json"), headers={"ETag": f'"{state.etag}"'})


@router.post("/api/config/validate", response_model=ValidateReply)
async def validate_config(request: Request, body: ConfigText):
    """Problems of a config text at their field paths and its diff against the running file; changes
    nothing."""
    state = await asyncio.to_thread(read_file, request.app.state.settings.config_path)
    current = state.text or ""
    _, problems = await asyncio.to_thread(check, body.yaml, state.text)
    diff = await asyncio.to_thread(diff_text, current, body.yaml)
    return JSONResponse(ValidateReply(ok=not problems, problems=problems, diff=diff).model_dump(mode="json"))


@router.put("/api/config", response_model=SaveReply, responses=ERRORS_400)
async def put_config(request: Request, body: ConfigText,
                     if_match: str | None = Header(default=None, max_length=1024,
                                                   description="the etag of the file this edit started from")):
    """Saves the config (atomically, the previous one kept) and has every service reload it."""
    return await _save(request, body.yaml, if_match, restore=True, what="saved")


@router.get("/api/config/history", response_model=HistoryReply)
async def config_history(request: Request):
    settings = request.app.state.settings

    def listing() -> HistoryReply:
        versions = [_info(p) for p in reversed(_history_entries(history_dir(settings.state_dir)))]
        state = read_file(settings.config_path)
        current = None
        if state.data is not None:
            current = VersionInfo(version=state.version, at=version_time(state.version), etag=state.etag,
                                  size=len(state.data))
        return HistoryReply(versions=versions, current=current)

    return JSONResponse((await asyncio.to_thread(listing)).model_dump(mode="json"))


@router.post("/api/config/rollback", response_model=SaveReply, responses=ERRORS_400)
async def rollback_config(request: Request, body: RollbackBody,
                          if_match: str | None = Header(default=None, max_length=1024,
                                                        description="the etag of the current file")):
    """Saves a kept version's content as the config (the current one goes to the history)."""
    _require_if_match(if_match)
    path = history_dir(request.app.state.settings.state_dir) / f"{body.version}.yaml"
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise HTTPException(404, f"no kept config version {body.version} (GET /api/config/history)") from None
    return await _save(request, data.decode("utf-8", errors="replace"), if_match, restore=False,
                       what=f"rolled back to {body.version}")
