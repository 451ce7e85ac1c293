"""The peers, installed pinned into the benchmark folder (``.bench/``) the project never imports: LiteLLM's
proxy into its own venv (refusing unexpected ``.pth`` hooks), Portkey's gateway with npm."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LITELLM_VERSION = "1.80.5"  # an exact version known to be clean; never a 1.107.x
PORTKEY_VERSION = "1.15.2"
HONO_NODE_SERVER_VERSION = "1.13.8"  # later @hono/node-server versions break Portkey's streaming
PIP_TIMEOUT_S = 900
NPM_TIMEOUT_S = 600

# .pth files whose import lines we accept, by file name and the distribution that owns it (its RECORD
# lists the file): setuptools' shim that lets SETUPTOOLS_USE_DISTUTILS pick distutils.
ALLOWED_PTH_HOOKS = {"distutils-precedence.pth": "setuptools"}

Say = Callable[[str], None]


@dataclass(frozen=True)
class Install:
    name: str
    ok: bool
    detail: str  # what is installed (ok) or why not


def pth_import_lines(text: str) -> list[str]:
    """The lines of a ``.pth`` file that ``site`` executes at every interpreter start."""
    return [line for line in text.splitlines() if line.startswith(("import ", "import\t"))]


def _dist_name(dist_info: str) -> str:
    """``litellm_proxy_extras-0.4.3.dist-info`` -> ``litellm-proxy-extras`` (normalized)."""
    name = dist_info[: -len(".dist-info")].split("-")[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(site_packages: Path, distribution: str) -> str | None:
    """The version of ``distribution`` from its ``.dist-info`` folder's name, without running Python there."""
    wanted = re.sub(r"[-_.]+", "-", distribution).lower()
    for info in site_packages.glob("*.dist-info"):
        if _dist_name(info.name) == wanted:
            return info.name[: -len(".dist-info")].split("-", 1)[1]
    return None


def pth_owners(site_packages: Path) -> dict[str, str]:
    """Top-level ``.pth`` file name -> the distribution whose RECORD installed it."""
    owners: dict[str, str] = {}
    for record in site_packages.glob("*.dist-info/RECORD"):
        owner = _dist_name(record.parent.name)
        for line in record.read_text(encoding="utf-8", errors="replace").splitlines():
            path = line.split(",", 1)[0]
            if path.endswith(".pth") and "/" not in path:
                owners[path] = owner
    return owners


def unexpected_pth_hooks(site_packages: Path) -> list[str]:
    """Every ``.pth`` start-up hook (a line ``site`` executes) but the allowed ones, as ``file (owner): line``."""
    owners = pth_owners(site_packages)
    problems = []
    for pth in sorted(site_packages.glob("*.pth")):
        lines = pth_import_lines(pth.read_text(encoding="utf-8", errors="replace"))
        owner, allowed_owner = owners.get(pth.name), ALLOWED_PTH_HOOKS.get(pth.name)
        if lines and (allowed_owner is None or allowed_owner != owner):
            problems.append(f"{pth.name} (from {owner or 'no installed package'}): {lines[0][:160]}")
    return problems


def venv_site_packages(venv: Path) -> Path | None:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    return found[0] if found else None


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING: Location")]
    errors = [line for line in lines if line.startswith(("ERROR", "npm error", "npm ERR!"))]
    picked = errors[-3:] if errors else lines[-2:]
    text = re.sub(r" \(from versions: [^)]*\)", "", " ".join(picked))  # pip lists every release
    return text[:300] or "no output"


def install_litellm(bench_dir: Path, say: Say) -> Install:
    name = f"LiteLLM {LITELLM_VERSION}"
    venv = bench_dir / "litellm-venv"
    site = venv_site_packages(venv)
    if site is not None and installed_version(site, "litellm") == LITELLM_VERSION:
        say(f"{name}: already installed in {venv} (reused)")
    else:
        say(f"{name}: installing litellm[proxy]=={LITELLM_VERSION} into {venv} (pip, a minute or two)")
        log = bench_dir / "litellm-install.log"
        bench_dir.mkdir(parents=True, exist_ok=True)
        try:
            # --clear: nothing of an older install (and none of its start-up hooks) runs with the new pip
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                           text=True, timeout=300)
            done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                                   "--disable-pip-version-check", f"litellm[proxy]=={LITELLM_VERSION}"],
                                  capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            return Install(name, False, f"python -m venv failed: {_last_error(exc.stderr or exc.stdout or '')}")
        except subprocess.TimeoutExpired:
            return Install(name, False, f"pip install did not finish within {PIP_TIMEOUT_S}s")
        log.write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            return Install(name, False, f"pip install failed: {_last_error(done.stdout + done.stderr)}")
        site = venv_site_packages(venv)
    version = installed_version(site, "litellm") if site else None
    if version != LITELLM_VERSION:
        return Install(name, False, f"expected litellm {LITELLM_VERSION} in {venv}, found {version or 'none'}")
    hooks = unexpected_pth_hooks(site)
    if hooks:
        return Install(name, False, "refused: .pth start-up hooks beyond the allowed "
                                    f"({', '.join(ALLOWED_PTH_HOOKS)}): " + "; ".join(hooks))
    say(f"{name}: ready, no .pth start-up hooks but {', '.join(ALLOWED_PTH_HOOKS)}")
    return Install(name, True, str(venv))


def portkey_package_json() -> dict:
    return {
        "name": "llmgw-bench-portkey",
        "private": True,
        "description": "generated by python -m llmgw_bench --peers: Portkey's gateway, pinned, for the benchmark only",
        "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION, "@hono/node-server": HONO_NODE_SERVER_VERSION},
        "overrides": {"@hono/node-server": HONO_NODE_SERVER_VERSION},
    }


def package_versions(node_modules: Path, package: str) -> set[str]:
    """Versions of ``package`` anywhere in a node_modules tree (nested copies included)."""
    versions = set()
    for manifest in node_modules.glob(f"**/node_modules/{package}/package.json"):
        versions.add(json.loads(manifest.read_text(encoding="utf-8")).get("version", "?"))
    top = node_modules / package / "package.json"
    if top.exists():
        versions.add(json.loads(top.read_text(encoding="utf-8")).get("version", "?"))
    return versions


def portkey_entry(portkey_dir: Path) -> Path:
    return portkey_dir / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def _portkey_installed(portkey_dir: Path) -> bool:
    modules = portkey_dir / "node_modules"
    return (portkey_entry(portkey_dir).exists()
            and package_versions(modules, "@portkey-ai/gateway") == {PORTKEY_VERSION}
            and package_versions(modules, "@hono/node-server") == {HONO_NODE_SERVER_VERSION})


# Portkey's server listens on every interface (no host option in 1.15.2): this preload makes a listen()
# without a host listen on loopback only.
LOOPBACK_PRELOAD = """\
// generated by python -m llmgw_bench --peers: servers listen on 127.0.0.1 when no host is given
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number') {
    if (args.length >= 2 && (args[1] === undefined || args[1] === null)) args[1] = '127.0.0.1';
    else if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
"""


def install_portkey(bench_dir: Path, say: Say) -> Install:
    name = f"Portkey gateway {PORTKEY_VERSION}"
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return Install(name, False, f"{tool} not found (apt-get install nodejs npm)")
    portkey_dir = bench_dir / "portkey"
    portkey_dir.mkdir(parents=True, exist_ok=True)
    manifest = portkey_dir / "package.json"
    wanted = json.dumps(portkey_package_json(), indent=2) + "\n"
    same_manifest = manifest.exists() and manifest.read_text(encoding="utf-8") == wanted
    (portkey_dir / "loopback.cjs").write_text(LOOPBACK_PRELOAD, encoding="utf-8")
    if same_manifest and _portkey_installed(portkey_dir):
        say(f"{name}: already installed in {portkey_dir} (reused)")
        return Install(name, True, str(portkey_dir))
    say(f"{name}: installing @portkey-ai/gateway@{PORTKEY_VERSION} with @hono/node-server@"
        f"{HONO_NODE_SERVER_VERSION} into {portkey_dir} (npm)")
    manifest.write_text(wanted, encoding="utf-8")
    try:
        # --ignore-scripts: the gateway's only install script is patch-package, with no patches in the package
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                              cwd=portkey_dir, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Install(name, False, f"npm install did not finish within {NPM_TIMEOUT_S}s")
    (bench_dir / "portkey-install.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        return Install(name, False, f"npm install failed: {_last_error(done.stdout + done.stderr)}")
    if not _portkey_installed(portkey_dir):
        modules = portkey_dir / "node_modules"
        return Install(name, False, "npm installed other versions: @portkey-ai/gateway "
                                    f"{sorted(package_versions(modules, '@portkey-ai/gateway'))}, @hono/node-server "
                                    f"{sorted(package_versions(modules, '@hono/node-server'))}")
    say(f"{name}: installed")
    return Install(name, True, str(portkey_dir))


