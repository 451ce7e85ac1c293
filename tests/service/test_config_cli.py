"""``llmgw config push / pull / diff``: the file and the gateway's config bucket, through the real CLI process
and a real NATS. Push checks first (an invalid file changes nothing), never creates the bucket on a NATS
that is not a gateway's, and stores what pull and diff give back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from llmgw_common import config_bucket
from llmgw_common.nats_conn import connect_nats

pytestmark = pytest.mark.integration

GOOD = """version: 1
providers:
  - id: local
    base_url: http://127.0.0.1:9/v1
    api_key: ${LLMGW_TEST_UNSET_KEY}   # resolved by each service, never stored resolved
    models: [{name: small}]
"""


def _llmgw(cwd, nats_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LLMGW_STATE_DIR")}
    env["NATS_URL"] = nats_url
    return subprocess.run([sys.executable, "-m", "llmgw_cli.main", "config", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


async def _bucket(nats_url: str, create: bool) -> config_bucket.Revision | None | bool:
    """The stored revision (None: empty); False when there is no bucket at all."""
    nc = await connect_nats(nats_url, "test-config-cli")
    try:
        kv = await config_bucket.open_bucket(nc.jetstream(), create=create)
        return False if kv is None else await config_bucket.current(kv)
    finally:
        await nc.close()


def test_push_pull_diff_round_trip_and_refusals(infra, tmp_path):
    url = infra.nats_url
    good = tmp_path / "llmgw.yaml"
    good.write_text(GOOD)

    # no bucket: not a gateway's NATS; push refuses and creates nothing
    done = _llmgw(tmp_path, url, "push", str(good))
    assert done.returncode == 1 and "not the gateway's" in done.stderr and "Traceback" not in done.stderr
    assert asyncio.run(_bucket(url, create=False)) is False

    # a gateway whose services started without a file: the bucket is there, empty; push seeds it
    assert asyncio.run(_bucket(url, create=True)) is None
    done = _llmgw(tmp_path, url, "push", str(good))
    assert done.returncode == 0, done.stderr
    first = asyncio.run(_bucket(url, create=False))
    assert first.text == GOOD and f"pushed as revision {first.revision}" in done.stdout
    assert "${LLMGW_TEST_UNSET_KEY} is not set" in done.stderr  # a warning, as config check says it

    # pull: stdout, or a file; diff: nothing when equal
    done = _llmgw(tmp_path, url, "pull")
    assert done.returncode == 0 and done.stdout == GOOD
    pulled = tmp_path / "pulled.yaml"
    assert _llmgw(tmp_path, url, "pull", str(pulled)).returncode == 0
    assert pulled.read_text() == GOOD and (pulled.stat().st_mode & 0o777) == 0o600
    done = _llmgw(tmp_path, url, "diff", str(good))
    assert (done.returncode, done.stdout) == (0, "")

    # an edit: diff shows it, push stores it as the next revision
    good.write_text(GOOD.replace("[{name: small}]", "[{name: small}, {name: large}]"))
    done = _llmgw(tmp_path, url, "diff", str(good))
    assert done.returncode == 1
    assert f"--- revision {first.revision}" in done.stdout
    assert "+    models: [{name: small}, {name: large}]\n" in done.stdout
    assert _llmgw(tmp_path, url, "push", str(good)).returncode == 0
    second = asyncio.run(_bucket(url, create=False))
    assert second.revision > first.revision and "large" in second.text
    done = _llmgw(tmp_path, url, "push", str(good))
    assert done.returncode == 0 and "already the running config" in done.stdout

    # an invalid file: its problems at their lines, nothing changes
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("base_url: http://127.0.0.1:9/v1", "base_url: ftp://nowhere"))
    done = _llmgw(tmp_path, url, "push", str(bad))
    assert done.returncode == 1
    assert f"{bad}:4: providers[0].base_url" in done.stderr and "not pushed" in done.stderr
    assert asyncio.run(_bucket(url, create=False)) == second
