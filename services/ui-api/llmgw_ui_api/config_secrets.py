"""Secrets in the config text: shown masked, put back on save.

Provider ``api_key`` literals and ``headers`` values (and credentials in ``pricing.source_url``) are
shown as ``"********"``; ``${VAR}`` references as they are. The document is edited with ruamel.yaml's
round trip (comments, order, quoting and flow style kept; block layout in the house style: mappings
indented by 2, sequence dashes by 2), so the editor never sees a secret. In a saved YAML a masked value
means "the secret this provider (matched by id) has now": it is put back from the running file before
validation, so the editor never loses one either; a text without masks is saved exactly as typed.

Comments are no document: comment lines that mention an ``api_key`` (or sit in a commented-out
``headers:`` block) are masked line by line, and restored when they come back unchanged. The same line
masker covers a text that is no YAML document at all (a hand edit gone wrong).
"""

from __future__ import annotations

import difflib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, PlainScalarString, ScalarString

from llmgw_common.config import _ENV_REF, SECRET_MASK, mask_url

MASKED_SCALAR = json.dumps(SECRET_MASK)  # "********": quoted, a plain * would start a YAML alias


_KEY_LINE = re.compile(r"^( *)(- +)?[^\s#-][^:#]*:(\s|$)")


def _layout(text: str) -> tuple[int, int]:
    """The file's block indentation: (mapping indent, dash offset under a key), the house style's
    (2, 2) unless the first nested key and the first block sequence say otherwise."""
    mapping = offset = None
    previous: tuple[int, bool] | None = None  # the last key line: its indent, whether it opens a block
    for line in text.splitlines():
        m = _KEY_LINE.match(line)
        dash = re.match(r"^( *)- ", line)
        if previous is not None and previous[1]:
            indent = len(dash.group(1)) if dash else len(m.group(1)) if m else None
            if indent is not None and indent >= previous[0]:
                if dash and offset is None:
                    offset = indent - previous[0]
                elif not dash and mapping is None and indent > previous[0]:
                    mapping = indent - previous[0]
        if m:
            key_indent = len(m.group(1)) + len(m.group(2) or "")
            previous = (key_indent, not line.split("#", 1)[0].rstrip().split(":", 1)[1].strip())
        elif line.strip() and not line.lstrip().startswith("#"):
            previous = None
        if mapping is not None and offset is not None:
            break
    return mapping or 2, 2 if offset is None else offset


def _yaml(text: str) -> YAML:
    """A round-trip loader and dumper that writes back what it read, in the layout of ``text``."""
    mapping, offset = _layout(text)
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.allow_duplicate_keys = True  # as the config loader (PyYAML): the last one wins
    y.width = 1 << 16  # never fold a long line
    y.indent(mapping=mapping, sequence=mapping + offset, offset=offset)
    y.brace_single_entry_mapping_in_flow_sequence = True  # [{name: m}] stays, not [name: m]
    return y


def _load(text: str) -> Any:
    """The round-trip document; raises ValueError when the text is no single YAML document."""
    try:
        return _yaml(text).load(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - ruamel's errors have no single base class
        raise ValueError(str(exc)) from None


def _dump(doc: Any, like: str) -> str:
    """The document as text, in the layout of the text ``like``."""
    out = io.StringIO()
    _yaml(like).dump(doc, out)
    return out.getvalue()


# ---- where secrets are in a document ---------------------------------------------------------------------

@dataclass
class SecretSite:
    """One secret-bearing value of the document: its field path, the provider it belongs to (by id),
    what it is, and where it is held (the mapping and key whose value it is)."""

    path: str
    provider: str | None  # the provider's id (None: outside providers, or no id)
    key: tuple[str, ...]  # ("api_key",) | ("headers", name) | ("source_url",)
    holder: CommentedMap
    name: Any

    @property
    def value(self) -> Any:
        return self.holder[self.name]

    def set(self, value: Any) -> None:
        if isinstance(value, str) and not isinstance(value, ScalarString):
            value = PlainScalarString(value)  # else ruamel would keep the replaced value's quotes
        _owner(self.holder, self.name)[self.name] = value

    def masked(self) -> Any:
        """The value as shown (itself when it is no secret: an ${ENV} reference, a URL without credentials)."""
        value = self.value
        if value is None:
            return value
        if self.key[0] == "source_url":
            shown = mask_url(value) if isinstance(value, str) else SECRET_MASK
            return value if shown == value else DoubleQuotedScalarString(shown)
        if isinstance(value, str) and (value == SECRET_MASK or _ENV_REF.match(value)):
            return value
        return DoubleQuotedScalarString(SECRET_MASK)

    def is_mask(self) -> bool:
        """Whether the value here is a mask standing for the running secret."""
        value = self.value
        if not isinstance(value, str):
            return False
        return SECRET_MASK in value if self.key[0] == "source_url" else value == SECRET_MASK


def _owner(mapping: CommentedMap, key: Any, depth: int = 0) -> CommentedMap:
    """The mapping that holds ``key`` itself: ``mapping``, or the one merged into it by ``<<``."""
    if key in getattr(mapping, "_ok", ()) or depth > 8:
        return mapping
    for merged in getattr(mapping, "merge", ()):
        if isinstance(merged, CommentedMap) and key in merged:
            return _owner(merged, key, depth + 1)
    return mapping


def secret_sites(doc: Any) -> Iterator[SecretSite]:
    """Every secret-bearing value of a round-trip config document."""
    if not isinstance(doc, CommentedMap):
        return
    providers = doc.get("providers")
    for i, provider in enumerate(providers if isinstance(providers, CommentedSeq) else []):
        if not isinstance(provider, CommentedMap):
            continue
        pid = provider.get("id") if isinstance(provider.get("id"), str) else None
        if "api_key" in provider:
            yield SecretSite(f"providers[{i}].api_key", pid, ("api_key",), provider, "api_key")
        headers = provider.get("headers")
        if isinstance(headers, CommentedMap):
            for name in headers:
                yield SecretSite(f"providers[{i}].headers.{name}", pid, ("headers", str(name)), headers, name)
        elif "headers" in provider and headers is not None:  # not a mapping: the whole value is hidden
            yield SecretSite(f"providers[{i}].headers", pid, ("headers", ""), provider, "headers")
    pricing = doc.get("pricing")
    if isinstance(pricing, CommentedMap) and "source_url" in pricing:
        yield SecretSite("pricing.source_url", None, ("source_url",), pricing, "source_url")


# ---- masking ------------------------------------------------------------------------------------------

def mask_text(text: str) -> str:
    """The YAML text with every literal secret replaced by ``"********"``, everything else as it is."""
    try:
        doc = _load(text)
    except ValueError:
        return _mask_lines(text, comments_only=False)
    hidden: list[str] = []
    for site in secret_sites(doc):
        shown = site.masked()
        if shown is not site.value:
            if isinstance(site.value, str) and len(site.value) >= 8:
                hidden.append(site.value)
            site.set(shown)
    if not hidden:  # nothing to hide in the document: the text exactly as it is
        return _mask_lines(text, comments_only=True)
    try:
        shown = _dump(doc, text)
    except Exception:  # noqa: BLE001 - a document ruamel reads but cannot write back: mask line by line
        return _mask_lines(text, comments_only=False)
    for secret in sorted(hidden, key=len, reverse=True):  # also where an anchor (&k) defines it elsewhere
        for written in (json.dumps(secret), f"'{secret}'", secret):
            shown = shown.replace(written, MASKED_SCALAR)
    return _mask_lines(shown, comments_only=True)


@dataclass
class Restored:
    text: str
    problems: list[tuple[str, str]] = field(default_factory=list)


def restore_secrets(new_text: str, current_text: str | None) -> Restored:
    """``new_text`` with each masked value put back from ``current_text`` (same provider id, same field);
    a mask with nothing to put back is a problem at its path. Comment lines that come back masked get
    their original text back."""
    try:
        doc = _load(new_text)
    except ValueError:
        return Restored(new_text)  # the parser reports it
    masks = [site for site in secret_sites(doc) if site.is_mask()]
    current: dict[tuple[str | None, tuple[str, ...]], SecretSite] = {}
    if current_text is not None and masks:
        try:
            for site in secret_sites(_load(current_text)):
                current.setdefault((site.provider, site.key), site)
        except ValueError:
            pass  # nothing to put back from: every mask is a problem
    problems: list[tuple[str, str]] = []
    for site in masks:
        found = current.get((site.provider, site.key))
        if found is not None and site.key[0] == "source_url" and found.masked() != site.value:
            found = None  # not the running URL as it was shown
        if found is None:
            problems.append((site.path, _nothing_to_restore(site)))
        else:
            site.set(found.value)
    text = _dump(doc, new_text) if masks and not problems else new_text
    return Restored(_restore_comments(text, current_text), problems)


def _nothing_to_restore(site: SecretSite) -> str:
    if site.key[0] == "source_url":
        return "a masked URL keeps the running one, but the running config has no such URL: type the whole URL"
    who = f"provider {site.provider!r}" if site.provider else "this provider (it has no id)"
    return (f"{SECRET_MASK} keeps the current secret, but {who} has none in the running config: type the value "
            "(or an ${ENV_VAR} reference)")


def _restore_comments(text: str, current_text: str | None) -> str:
    """Comment lines that come back as they were shown get their running text back."""
    if current_text is None:
        return text
    originals: dict[str, str] = {}
    for shown, original in zip(_mask_lines(current_text, comments_only=True).splitlines(),
                               current_text.splitlines()):
        if shown != original:
            originals.setdefault(shown, original)
    if not originals:
        return text
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines):
        body = line.rstrip("\r\n")
        if body in originals:
            lines[n] = originals[body] + line[len(body):]
    return "".join(lines)


def diff_text(current_text: str, new_text: str) -> str:
    """Unified diff, running file -> edited text, secrets masked on both sides."""
    before = mask_text(current_text).splitlines(keepends=True)
    after = mask_text(new_text).splitlines(keepends=True)
    lines = []
    for line in difflib.unified_diff(before, after, fromfile="running", tofile="edited"):
        lines.append(line if line.endswith("\n") else line + "\n")
    return "".join(lines)


# ---- line by line: comment lines, and text that is no YAML document ------------------------------------

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
