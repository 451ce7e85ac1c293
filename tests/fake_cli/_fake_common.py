"""What the fake ``claude`` and ``gemini`` share: behaviour chosen by environment variables.

FAKE_CLI_MODE      ok (default) | slow | hang | ignoreterm | fail | auth | limit | noresult | tools | thinking
FAKE_CLI_TEXT      the answer (default: "Hello from the fake CLI.")
FAKE_CLI_DELAY     seconds between lines (default 0.01; "slow": 0.3)
FAKE_CLI_PIDFILE   the CLI's pid is appended here (and its grandchild's, with FAKE_CLI_GRANDCHILD=1)
FAKE_CLI_RECORD    what the CLI was given (argv, stdin, cwd, a few env names) is written here as JSON
FAKE_CLI_LOG       "start <pid> <time>" / "end <pid> <time>" lines appended (concurrency checks)
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
import uuid

MODE = os.environ.get("FAKE_CLI_MODE", "ok")
TEXT = os.environ.get("FAKE_CLI_TEXT", "Hello from the fake CLI.")
DELAY = float(os.environ.get("FAKE_CLI_DELAY", "0.3" if MODE == "slow" else "0.01"))
SESSION = str(uuid.uuid4())


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def begin(argv: list[str]) -> str:
    """Read the prompt from stdin, record the call; returns the prompt."""
    if MODE == "ignoreterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pidfile = os.environ.get("FAKE_CLI_PIDFILE")
    if pidfile:
        _append(pidfile, str(os.getpid()))
        if os.environ.get("FAKE_CLI_GRANDCHILD"):
            child = subprocess.Popen(["sleep", "300"])
            _append(pidfile, str(child.pid))
    logfile = os.environ.get("FAKE_CLI_LOG")
    if logfile:
        _append(logfile, f"start {os.getpid()} {time.time()}")
        atexit.register(lambda: _append(logfile, f"end {os.getpid()} {time.time()}"))
    stdin = sys.stdin.read()
    record = os.environ.get("FAKE_CLI_RECORD")
    if record:
        with open(record, "w") as f:
            json.dump({"argv": argv, "stdin": stdin, "cwd": os.getcwd(), "cwd_files": os.listdir("."),
                       "env": {k: os.environ.get(k) for k in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "HOME")}},
                      f)
    return stdin


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    time.sleep(DELAY)


def hang() -> None:
    while True:
        time.sleep(60)


def chunks(text: str, size: int = 6) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None
