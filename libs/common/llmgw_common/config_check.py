"""Checking a config text the way people read it: every problem at once, each at its line.

Used by ``llmgw config check`` and by the admin API's config editor (ui-api), so both say the same
thing about the same file. Errors come from ``parse_config_text`` (field paths, nearest valid names);
this module adds where each one is in the text, warnings for ``${VAR}`` references the environment
does not set, and the summary line of a valid file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import yaml

from .config import _ENV_REF, ConfigError, GatewayConfig, parse_config_text

_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")
_YAML_WHERE = re.compile(r"^line (\d+), column \d+$")


@dataclass(frozen=True)
class Finding:
    path: str  # field path (providers[1].base_url), "line L, column C" for YAML syntax, "" for the document
    message: str
    line: int | None = None  # 1-based; None: no place in the text (a missing document, a whole-file problem)

    def __str__(self) -> str:
        """``path: message`` (a YAML syntax error: the message alone, its path is only its line)."""
        return self.message if _YAML_WHERE.match(self.path) else f"{self.path or '<root>'}: {self.message}"


@dataclass
class Report:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    config: GatewayConfig | None = None  # None: invalid


def check_text(text: str, env: Mapping[str, str] | None = None) -> Report:
    """Every error of a config text, each with its line; with ``env``, also a warning for each
    ``${VAR}`` reference it does not set (an unset key is no error: the provider only fails to answer)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        root = None
    report = Report()
    try:
        report.config = parse_config_text(text)
    except ConfigError as exc:
        found = [Finding(path, message, line_of(root, path)) for path, message in exc.problems]
        report.errors = sorted(found, key=lambda f: (f.line is None, f.line or 0))  # in reading order
    except RecursionError:
        report.errors = [Finding("", "not valid YAML: nested too deeply")]
    if env is not None and root is not None:
        report.warnings = [Finding(path, f"${{{name}}} is not set in the environment", node.start_mark.line + 1)
                           for path, name, node in env_references(root) if not env.get(name)]
    return report


def summary(config: GatewayConfig) -> str:
    """``2 providers, 3 models, 1 alias``."""
    models = {m.name for p in config.providers for m in p.models}
    return ", ".join(plural(n, word) for n, word in (
        (len(config.providers), "provider"), (len(models), "model"), (len(config.routing.aliases), "alias"),
        (len(config.routing.rules), "rule")))


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


# ---- where a field path is in the text ---------------------------------------------------------------

def _pairs(node: yaml.MappingNode, depth: int = 0) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    """A mapping's key/value nodes, those merged in by ``<<`` too."""
    for key, value in node.value:
        if key.tag == "tag:yaml.org,2002:merge" and depth < 8:
            for merged in (value.value if isinstance(value, yaml.SequenceNode) else [value]):
                if isinstance(merged, yaml.MappingNode):
                    yield from _pairs(merged, depth + 1)
        else:
            yield key, value


def line_of(root: yaml.Node | None, path: str) -> int | None:
    """The 1-based line of a field path in a composed document: the deepest part of it that is written
    there (a missing field: the line of the mapping that lacks it). YAML syntax errors carry their own."""
    said = _YAML_WHERE.match(path)
    if said:
        return int(said.group(1))
    if root is None:
        return None
    node, line = root, None
    for index, name in _PATH_PART.findall(path):
        if isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
            node = node.value[int(index)]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode) and name:
            found = next(((k, v) for k, v in _pairs(node) if isinstance(k, yaml.ScalarNode) and k.value == name),
                         None)
            if found is None:
                break
            line = found[0].start_mark.line + 1  # the key's line: where an unknown field is written
            node = found[1]
        else:
            break
    if line is None and root.start_mark is not None:
        line = root.start_mark.line + 1
    return line


def env_references(root: yaml.Node, path: str = "", depth: int = 0) -> Iterator[tuple[str, str, Any]]:
    """Every ``${VAR}`` scalar: (field path, VAR, node)."""
    if isinstance(root, yaml.ScalarNode):
        m = _ENV_REF.match(str(root.value))
        if m:
            yield path, m.group(1), root
    elif depth < 32 and isinstance(root, yaml.SequenceNode):
        for i, item in enumerate(root.value):
            yield from env_references(item, f"{path}[{i}]", depth + 1)
    elif depth < 32 and isinstance(root, yaml.MappingNode):
        for key, value in _pairs(root):
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            yield from env_references(value, f"{path}.{name}" if path else str(name), depth + 1)
