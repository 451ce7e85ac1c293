"""Pricing: price models, the LiteLLM source, the source chain (remote -> cache -> bundled),
overrides, announcements on NATS, the snapshot script and ui-api's GET /api/pricing.

The public source is never reached from here: "offline" is a closed local port
(and a server that never answers), "online" is a local HTTP server serving a
small LiteLLM-format JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import zipfile
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from llmgw_common import subjects
from llmgw_common.config import ConfigError, Price, parse_config, parse_config_text
from llmgw_common.messages import PriceKey, PriceList, PriceLookup, PricingChanged
from llmgw_common.nats_conn import connect_nats, request
from llmgw_pricing.main import PricingSettings, cache_path
from llmgw_pricing.main import serve as serve_pricing
from llmgw_pricing.prices import PriceTable, all_prices, effective_price, lookup_names
from llmgw_pricing.sources import (
    PriceSourceError,
    fetch_prices,
    parse_document,
    parse_litellm,
    read_cache,
    write_cache,
)
from llmgw_ui_api.main import UiApiSettings, create_app
from admin import ADMIN_HEADERS, UI_TOKENS
from stacks import push_config

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0

# a small list in LiteLLM's format: what the public source serves
LITELLM_JSON = {
    "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "mode": "one of: chat, embedding"},
    "gpt-4o-mini": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,
                    "output_cost_per_token": 2e-06, "cache_read_input_token_cost": 5e-07},
    "o3-mini": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1.1e-06,
                "output_cost_per_token": 4.4e-06, "output_cost_per_reasoning_token": 8e-06},
    "claude-haiku-4-5": {"litellm_provider": "anthropic", "mode": "chat", "input_cost_per_token": 1e-06,
                         "output_cost_per_token": 5e-06, "cache_creation_input_token_cost": 1.25e-06,
                         "cache_read_input_token_cost": 1e-07},
    "groq/llama-3.3-70b-versatile": {"litellm_provider": "groq", "mode": "chat",
                                     "input_cost_per_token": 5.9e-07, "output_cost_per_token": 7.9e-07},
    "text-embedding-3-small": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 2e-08},
    "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
    "broken": {"mode": "chat", "input_cost_per_token": "cheap", "output_cost_per_token": 1e-06},
    "no-output-price": {"mode": "chat", "input_cost_per_token": 1e-06},
}


def config_text(source_url: str | None, extra: str = "") -> str:
    url = "null" if source_url is None else json.dumps(source_url)
    return f"""
providers:
  - id: openai
    base_url: http://127.0.0.1:9/v1
    models:
      - name: gpt-4o-mini
      - name: o3-mini
      - name: gpt-4o
      - name: custom
        price: {{input_per_mtok: 7, output_per_mtok: 9}}
      - name: mystery-model-xyz
  - id: mygroq
    base_url: https://api.groq.com/openai/v1
    models:
      - name: llama
        upstream: llama-3.3-70b-versatile
  - id: copilot
    base_url: http://127.0.0.1:9/v1
    models:
      - name: gpt-4.1
        price: {{monthly_fee_usd: 10}}
      - name: claude-sonnet-4-5
pricing:
  source_url: {url}
  fetch_timeout_s: 5
  overrides:
    copilot/claude-sonnet-4-5: {{monthly_fee_usd: 10}}
{extra}
"""


# ---- local HTTP servers -------------------------------------------------------

class _Server:
    """A real HTTP server on a free port, in a thread. ``hold`` keeps every answer back until released."""

    def __init__(self, body: bytes, status: int = 200, hold: bool = False):
        self.body, self.status = body, status
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.requests = 0
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                outer.arrived.set()
                outer.release.wait(60)
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                try:
                    self.wfile.write(outer.body)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model_prices_and_context_window.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/prices.json"  # nothing listens there any more: connection refused


# ---- price models ------------------------------------------------------------

def test_cost_keeps_its_semantics_and_adds_reasoning():
    p = Price(input_per_mtok=Decimal("2"), output_per_mtok=Decimal("8"), cached_input_per_mtok=Decimal("0.5"))
    # tokens_in includes cached: 600 uncached at 2 + 400 cached at 0.5 + 100 out at 8
    assert p.cost(1000, 100, cached_in=400) == Decimal("0.0022")
    assert p.cost(1000, 100) == Decimal("0.0028")
    # reasoning tokens are part of tokens_out; without a reasoning price they cost the output price
    assert p.cost(1000, 100, reasoning=60) == p.cost(1000, 100)
    r = Price(input_per_mtok=Decimal("1"), output_per_mtok=Decimal("4"), reasoning_per_mtok=Decimal("10"))
    assert r.cost(0, 100, reasoning=60) == (40 * Decimal(4) + 60 * Decimal(10)) / Decimal(1_000_000)
    assert not r.is_free and not Price(reasoning_per_mtok=Decimal("1")).is_free


def test_cost_prices_cache_reads_cache_writes_and_reasoning_each_at_its_rate():
    # Anthropic-like: cache writes 1.25x input, cache reads 0.1x input; a reasoning price of its own
    p = Price(input_per_mtok=Decimal("3"), output_per_mtok=Decimal("15"), cached_input_per_mtok=Decimal("0.3"),
              cache_write_per_mtok=Decimal("3.75"), reasoning_per_mtok=Decimal("20"))
    # prompt 10,000 = 2,000 cache reads + 5,000 cache writes + 3,000 plain; output 1,000 = 400 reasoning + 600
    by_hand = (Decimal(3000) * 3 + Decimal(2000) * Decimal("0.3") + Decimal(5000) * Decimal("3.75")
               + Decimal(600) * 15 + Decimal(400) * 20) / 1_000_000
    assert by_hand == Decimal("0.04535")
    assert p.cost(10_000, 1_000, cached_in=2_000, reasoning=400, cache_write=5_000) == by_hand
    assert p.cost(10_000, 1_000, 2_000, 400, 5_000) == by_hand  # positional order kept for old callers
    # without a cache-write price, cache writes cost the input price: same as plain prompt tokens
    q = Price(input_per_mtok=Decimal("3"), output_per_mtok=Decimal("15"))
    assert q.cost(10_000, 0, cache_write=5_000) == q.cost(10_000, 0) == Decimal("0.03")
    # more cache tokens than prompt tokens (a provider counting them apart): nothing negative, each part priced
    assert p.cost(100, 0, cached_in=100, cache_write=100) == (100 * Decimal("0.3") + 100 * Decimal("3.75")) / 1_000_000
    # a cache-write price alone makes a model paid
    assert not Price(cache_write_per_mtok=Decimal("1")).is_free and Price(cache_write_per_mtok=Decimal(0)).is_free
    with pytest.raises(ValueError):
        Price(cache_write_per_mtok=Decimal("-1"))


def test_per_request_and_flat_rate():
    per_req = Price(per_request=Decimal("0.002"))
    assert per_req.cost(5000, 5000) == Decimal("0.002") and not per_req.is_free
    flat = Price(monthly_fee_usd=Decimal("10"))
    assert flat.cost(100_000, 100_000, cached_in=10, reasoning=10, cache_write=10) == 0  # marginal cost 0
    assert flat.is_free  # routing treats it as free capacity; the fee is reported, not charged per call
    assert Price().is_free


def test_pricing_config_section_and_error_paths():
    cfg = parse_config_text(config_text("https://example.org/p.json"))
    assert cfg.pricing.source_url == "https://example.org/p.json" and cfg.pricing.fetch_on_start
    assert cfg.pricing.overrides["copilot/claude-sonnet-4-5"].monthly_fee_usd == 10
    assert parse_config({}).pricing.source_url.startswith("https://raw.githubusercontent.com/BerriAI/litellm/")

    def problems(data) -> dict[str, str]:
        with pytest.raises(ConfigError) as err:
            parse_config(data, "t.yaml")
        return dict(err.value.problems)

    assert "pricing.source_url" in problems({"pricing": {"source_url": "ftp://x"}})
    assert "pricing.fetch_timeout_s" in problems({"pricing": {"fetch_timeout_s": 0}})
    assert "pricing.refresh_interval_s" in problems({"pricing": {"refresh_interval_s": 5}})
    assert "pricing.overrides.gpt-4o.input_per_mtok" in problems(
        {"pricing": {"overrides": {"gpt-4o": {"input_per_mtok": -1}}}})
    assert "pricing.overrides.claude.cache_write_per_mtok" in problems(
        {"pricing": {"overrides": {"claude": {"cache_write_per_mtok": -1}}}})
    assert parse_config({"pricing": {"overrides": {"claude": {"cache_write_per_mtok": "3.75"}}}}).pricing.overrides[
        "claude"].cache_write_per_mtok == Decimal("3.75")
    assert "pricing.overrides.gpt-4o.monthly_fee" in problems(
        {"pricing": {"overrides": {"gpt-4o": {"monthly_fee": 3}}}})
    assert "providers[0].models[0].price.reasoning_per_mtok" in problems(
        {"providers": [{"id": "a", "base_url": "http://h", "models": [
            {"name": "m", "price": {"reasoning_per_mtok": "lots"}}]}]})
    assert "pricing.source_url" not in problems({"pricing": {"source_url": None, "fetch_timeout_s": -1}})


# ---- the LiteLLM format and lookups ----------------------------------------------

def test_parse_litellm_keeps_chat_and_embedding_token_prices():
    prices = parse_litellm(LITELLM_JSON)
    assert set(prices) == {"gpt-4o-mini", "o3-mini", "claude-haiku-4-5", "groq/llama-3.3-70b-versatile",
                           "text-embedding-3-small"}
    assert prices["gpt-4o-mini"] == Price(input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"),
                                          cached_input_per_mtok=Decimal("0.5"))
    assert prices["o3-mini"].reasoning_per_mtok == Decimal("8")
    assert prices["o3-mini"].cache_write_per_mtok is None and prices["gpt-4o-mini"].cache_write_per_mtok is None
    assert prices["claude-haiku-4-5"] == Price(input_per_mtok=Decimal("1"), output_per_mtok=Decimal("5"),
                                               cache_write_per_mtok=Decimal("1.25"),
                                               cached_input_per_mtok=Decimal("0.1"))
    assert prices["groq/llama-3.3-70b-versatile"].input_per_mtok == Decimal("0.59")
    assert prices["text-embedding-3-small"] == Price(input_per_mtok=Decimal("0.02"))
    with pytest.raises(PriceSourceError, match="top level"):
        parse_litellm([1, 2])
    with pytest.raises(PriceSourceError, match="no chat or embedding"):
        parse_litellm({"dall-e-3": LITELLM_JSON["dall-e-3"]})


def test_table_lookup_by_qualified_vendor_bare_and_case_insensitive_names():
    p = Price(input_per_mtok=Decimal(1))
    q = Price(input_per_mtok=Decimal(2))
    table = PriceTable({"gpt-4o": p, "groq/llama-3.3-70b-versatile": q, "openrouter/meta/llama-x": p,
                        "fireworks_ai/meta/llama-x": q, "together_ai/mixtral": q}, "bundled")
    cfg = parse_config_text(config_text(None))
    groq = cfg.provider("mygroq")
    assert lookup_names("mygroq", "llama-3.3-70b-versatile", groq)[:2] == [
        "mygroq/llama-3.3-70b-versatile", "groq/llama-3.3-70b-versatile"]  # vendor from the API host
    assert table.find(lookup_names("mygroq", "llama-3.3-70b-versatile", groq)) == ("groq/llama-3.3-70b-versatile", q)
    assert table.find(lookup_names("openrouter", "openai/gpt-4o")) == ("gpt-4o", p)
    assert table.find(lookup_names("x", "GPT-4o")) == ("gpt-4o", p)
    assert table.find(lookup_names("openrouter", "meta/llama-x")) == ("openrouter/meta/llama-x", p)
    assert table.find(lookup_names("local", "mixtral")) == ("together_ai/mixtral", q)  # unique bare name
    assert table.find(lookup_names("local", "meta/llama-x")) is None  # two vendors, two prices: not guessed


def test_effective_price_order():
    cfg = parse_config_text(config_text(None, extra="""    openai/gpt-4o: {input_per_mtok: 3}
    o3-mini: {input_per_mtok: 4}
    custom: {input_per_mtok: 99}"""))
    fetched = PriceTable(parse_litellm(LITELLM_JSON), "remote", datetime(2025, 1, 2, tzinfo=timezone.utc), "u")
    bundled = PriceTable.bundled()
    tables = [fetched, bundled]

    def info(provider, model):
        return effective_price(cfg, tables, PriceKey(provider=provider, model=model))

    assert (info("openai", "custom").source, info("openai", "custom").price.input_per_mtok) == ("config", 7)
    assert info("openai", "custom").matched == "providers[0].models[3].price"  # the model's own price wins
    assert info("openai", "gpt-4o").matched == "pricing.overrides.openai/gpt-4o"
    assert info("openai", "o3-mini").matched == "pricing.overrides.o3-mini"
    mini = info("openai", "gpt-4o-mini")
    assert (mini.source, mini.price.input_per_mtok, mini.as_of.year) == ("remote", 1, 2025)
    llama = info("mygroq", "llama-3.3-70b-versatile")
    assert (llama.source, llama.matched) == ("remote", "groq/llama-3.3-70b-versatile")
    gpt41 = info("copilot", "gpt-4.1")
    assert gpt41.source == "config" and gpt41.price.monthly_fee_usd == 10 and gpt41.price.is_free
    sonnet = info("copilot", "claude-sonnet-4-5")
    assert sonnet.matched == "pricing.overrides.copilot/claude-sonnet-4-5"
    assert info("openai", "mystery-model-xyz").source == "unknown"
    # a model the fetched list lacks falls through to the bundled snapshot
    no_override = parse_config_text(config_text(None))
    gpt4o = effective_price(no_override, tables, PriceKey(provider="openai", model="gpt-4o"))
    assert (gpt4o.source, gpt4o.price) == ("bundled", bundled.prices["gpt-4o"])
    listed = all_prices(no_override, tables)
    assert len(listed) == len({(p.provider, p.model) for p in listed}) == 8


# ---- the bundled snapshot and its script ----------------------------------------

def test_bundled_snapshot_has_origin_date_and_usual_models():
    path = ROOT / "services/pricing/llmgw_pricing/data/prices.json"
    doc = json.loads(path.read_text())
    assert doc["origin"]["package"] == "litellm" and doc["origin"]["version"]
    assert len(doc["origin"]["sha256"]) == 64 and doc["snapshot_date"] and doc["as_of"]
    table = PriceTable.bundled()
    assert table.kind == "bundled" and table.as_of is not None and "litellm" in table.origin
    assert len(table.prices) > 500
    for name in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small"):
        assert name in table.prices
    assert any(k.startswith("groq/") for k in table.prices) and any(k.startswith("mistral/") for k in table.prices)
    assert table.prices["gpt-4o"].output_per_mtok > table.prices["gpt-4o"].input_per_mtok > 0


def test_snapshot_script_from_json_and_from_wheel(tmp_path):
    src = tmp_path / "model_prices_and_context_window.json"
    src.write_text(json.dumps(LITELLM_JSON))
    out = tmp_path / "prices.json"
    script = ROOT / "scripts/make_price_snapshot.py"
    subprocess.run([sys.executable, str(script), "--json", str(src), "--out", str(out)], check=True,
                   capture_output=True)
    prices, as_of, origin = parse_document(json.loads(out.read_text()), str(out))
    assert prices == parse_litellm(LITELLM_JSON) and as_of is not None
    assert origin["source"] == "file" and len(origin["sha256"]) == 64

    wheel = tmp_path / "litellm-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("litellm/model_prices_and_context_window_backup.json", json.dumps(LITELLM_JSON))
        z.writestr("litellm-9.9.9.dist-info/METADATA", "Metadata-Version: 2.1\nName: litellm\nVersion: 9.9.9\n")
    subprocess.run([sys.executable, str(script), "--wheel", str(wheel), "--out", str(out)], check=True,
                   capture_output=True)
    table = PriceTable.bundled(out)
    assert table.origin == "litellm 9.9.9 (litellm/model_prices_and_context_window_backup.json)"
    assert table.prices["o3-mini"].reasoning_per_mtok == Decimal("8")
    assert table.prices["claude-haiku-4-5"].cache_write_per_mtok == Decimal("1.25")  # the snapshot keeps it
    assert '"cache_write_per_mtok": "1.25"' in out.read_text()


# ---- fetching -------------------------------------------------------------------

async def test_fetch_from_a_local_server_and_its_failures():
    with _Server(json.dumps(LITELLM_JSON).encode()) as srv:
        assert await fetch_prices(srv.url, 5) == parse_litellm(LITELLM_JSON)
    with _Server(b"{}", status=404) as srv:
        with pytest.raises(PriceSourceError, match="HTTP 404"):
            await fetch_prices(srv.url, 5)
    with _Server(b"<html>maintenance</html>") as srv:
        with pytest.raises(PriceSourceError, match="not JSON"):
            await fetch_prices(srv.url, 5)
    with _Server(b"x" * 2000) as srv:
        with pytest.raises(PriceSourceError, match="larger than"):
            await fetch_prices(srv.url, 5, max_bytes=1000)
    with pytest.raises(PriceSourceError, match="ConnectError"):
        await fetch_prices(closed_port_url(), 5)
    with _Server(b"{}", hold=True) as srv:  # accepts, never answers: the fetch gives up at its timeout
        with pytest.raises(PriceSourceError, match="no complete answer within 0.3s"):
            await fetch_prices(srv.url, 0.3)


def test_cache_round_trip_and_damaged_cache(tmp_path):
    path = tmp_path / "pricing" / "prices-cache.json"
    assert read_cache(path) is None
    at = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    write_cache(path, parse_litellm(LITELLM_JSON), "https://u:secret@example.org/p.json?token=t0k", at)
    prices, as_of, origin = read_cache(path)
    assert prices == parse_litellm(LITELLM_JSON) and as_of == at
    assert origin["url"] == "https://example.org/p.json"  # no credentials, no query on disk
    assert "secret" not in path.read_text() and "t0k" not in path.read_text()
    path.write_text("{half")
    with pytest.raises(PriceSourceError, match="not JSON"):
        read_cache(path)


# ---- the service over NATS -------------------------------------------------------

@pytest.fixture
def run_pricing(infra, tmp_path):
    """Start pricing services (real NATS) on configs; everything started is stopped at the end."""
    running: list[tuple[asyncio.Event, asyncio.Task]] = []

    async def start(text: str, state_dir: Path | None = None) -> PricingSettings:
        cfg_path = tmp_path / "llmgw.yaml"
        cfg_path.write_text(text)
        await push_config(infra.nats_url, text)  # the config it starts with: the bucket's current revision
        settings = PricingSettings(NATS_URL=infra.nats_url, LLMGW_CONFIG=str(cfg_path),
                                   LLMGW_STATE_DIR=str(state_dir or tmp_path / "state"))
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(serve_pricing(settings, stop))))
        return settings

    async def stop_all() -> None:
        for stop, _ in running:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*(t for _, t in running)), 15)
        running.clear()

    start.stop_all = stop_all
    yield start
    for stop, task in running:
        stop.set()
        task.cancel()


async def _listen(nc, subject):
    got: asyncio.Queue = asyncio.Queue()

    async def cb(msg):
        await got.put(msg)

    await nc.subscribe(subject, cb=cb)
    return got


async def _next_change(queue: asyncio.Queue, reason: str) -> PricingChanged:
    while True:
        msg = await asyncio.wait_for(queue.get(), DEADLINE_S)
        change = PricingChanged.decode(msg.data)
        if change.reason == reason:
            return change


async def _list(nc) -> PriceList:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        try:
            return await request(nc, subjects.PRICING_LIST, PriceLookup(keys=[]), PriceList, 2)
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _list_until(nc, predicate, what: str) -> PriceList:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while loop.time() < deadline:
        answer = await _list(nc)
        if predicate(answer):
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"pricing never reached: {what}")


def _by(answer: PriceList):
    return {(p.provider, p.model): p for p in answer.prices}


async def test_offline_falls_to_bundled_then_to_cache(infra, run_pricing, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="llmgw.pricing")
    offline = closed_port_url().replace("http://", "http://admin:hunter2@") + "?key=s3cr3t"
    nc = await connect_nats(infra.nats_url, "test")
    try:
        # 1. nothing cached, source unreachable: bundled snapshot
        settings = await run_pricing(config_text(offline))
        answer = await _list_until(nc, lambda a: a.status.last_fetch_ok is False, "a failed fetch")
        prices, status = _by(answer), answer.status
        bundled = PriceTable.bundled()
        assert prices[("openai", "gpt-4o-mini")].source == "bundled"
        assert prices[("openai", "gpt-4o-mini")].price == bundled.prices["gpt-4o-mini"]
        assert prices[("openai", "custom")].source == "config"
        assert prices[("openai", "mystery-model-xyz")].source == "unknown"
        assert status.table == "bundled" and "ConnectError" in status.last_fetch_error
        assert status.bundled_origin.startswith("litellm ")
        shown = json.dumps(answer.model_dump(mode="json")) + caplog.text
        assert "hunter2" not in shown and "s3cr3t" not in shown and "price fetch failed" in caplog.text
        assert not cache_path(settings).exists()
        await run_pricing.stop_all()

        # 2. a cache from an earlier fetch, source still unreachable: the cache
        fetched_at = datetime(2025, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
        write_cache(cache_path(settings), parse_litellm(LITELLM_JSON), "https://example.org/p.json", fetched_at)
        await run_pricing(config_text(offline))
        answer = await _list_until(nc, lambda a: a.status.last_fetch_ok is False, "a failed fetch")
        prices = _by(answer)
        mini = prices[("openai", "gpt-4o-mini")]
        assert (mini.source, mini.price.input_per_mtok, mini.as_of) == ("cache", Decimal(1), fetched_at)
        assert prices[("mygroq", "llama-3.3-70b-versatile")].source == "cache"
        assert prices[("openai", "gpt-4o")].source == "bundled"  # not in the cached list
        assert answer.status.table == "cache" and answer.status.table_as_of == fetched_at
    finally:
        await nc.close()
        await run_pricing.stop_all()


async def test_online_remote_wins_is_cached_and_announced(infra, run_pricing):
    nc = await connect_nats(infra.nats_url, "test")
    changes = await _listen(nc, subjects.PRICING_CHANGED)
    try:
        with _Server(json.dumps(LITELLM_JSON).encode()) as srv:
            settings = await run_pricing(config_text(srv.url))
            assert (await _next_change(changes, "start")).changed == []
            change = await _next_change(changes, "fetch")
            # bundled -> remote for every model the fetched list prices (and that no config price covers)
            assert {(k.provider, k.model) for k in change.changed} == {
                ("openai", "gpt-4o-mini"), ("openai", "o3-mini"), ("mygroq", "llama-3.3-70b-versatile")}
            reply = await request(nc, subjects.PRICING_LOOKUP, PriceLookup(keys=[
                PriceKey(provider="openai", model="gpt-4o-mini"), PriceKey(provider="openai", model="o3-mini"),
                PriceKey(provider="openai", model="gpt-4o"), PriceKey(provider="openai", model="custom")]),
                PriceList, 5)
            mini, o3, gpt4o, custom = reply.prices
            assert (mini.source, mini.price.input_per_mtok, mini.price.cached_input_per_mtok) == (
                "remote", Decimal(1), Decimal("0.5"))
            assert o3.price.reasoning_per_mtok == Decimal(8)
            assert gpt4o.source == "bundled" and custom.source == "config"
            answer = await _list(nc)
            assert answer.status.table == "remote" and answer.status.last_fetch_ok
            assert answer.status.table_origin == srv.url and srv.requests == 1
        # the fetch was written to the cache, with its time
        prices, as_of, origin = read_cache(cache_path(settings))
        assert prices == parse_litellm(LITELLM_JSON)
        assert as_of == answer.status.table_as_of and origin["url"] == srv.url
    finally:
        await nc.close()
        await run_pricing.stop_all()


async def test_start_up_never_waits_for_a_hanging_source(infra, run_pricing):
    nc = await connect_nats(infra.nats_url, "test")
    try:
        with _Server(json.dumps(LITELLM_JSON).encode(), hold=True) as srv:
            await run_pricing(config_text(srv.url).replace("fetch_timeout_s: 5", "fetch_timeout_s: 60"))
            assert await asyncio.to_thread(srv.arrived.wait, DEADLINE_S), "the fetch never reached the server"
            # the fetch is in flight and held back: the service answers meanwhile, from the bundled snapshot
            answer = await _list(nc)
            assert not srv.release.is_set()
            assert answer.status.last_fetch_at is None and answer.status.table == "bundled"
            assert _by(answer)[("openai", "gpt-4o-mini")].source == "bundled"
            srv.release.set()
            answer = await _list_until(nc, lambda a: a.status.table == "remote", "the remote table")
            assert _by(answer)[("openai", "gpt-4o-mini")].source == "remote"
    finally:
        await nc.close()
        await run_pricing.stop_all()


async def test_config_change_announces_the_changed_prices(infra, run_pricing, tmp_path):
    nc = await connect_nats(infra.nats_url, "test")
    changes = await _listen(nc, subjects.PRICING_CHANGED)
    try:
        await run_pricing(config_text(None))
        await _next_change(changes, "start")
        await push_config(infra.nats_url, config_text(None, extra="    gpt-4o-mini: {input_per_mtok: 0.01}"))
        change = await _next_change(changes, "config")
        assert [(k.provider, k.model) for k in change.changed] == [("openai", "gpt-4o-mini")]
        mini = _by(await _list(nc))[("openai", "gpt-4o-mini")]
        assert (mini.source, mini.matched, mini.price.input_per_mtok) == (
            "config", "pricing.overrides.gpt-4o-mini", Decimal("0.01"))
        # an invalid config changes nothing and announces nothing
        await push_config(infra.nats_url, "providers: [{id: BAD}]")
        mini = _by(await _list(nc))[("openai", "gpt-4o-mini")]
        assert mini.price.input_per_mtok == Decimal("0.01")
    finally:
        await nc.close()
        await run_pricing.stop_all()


# ---- ui-api ----------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _ui(infra, config_path: Path):
    app = create_app(UiApiSettings(**UI_TOKENS, NATS_URL=infra.nats_url, LLMGW_CONFIG=str(config_path),
                                   LLMGW_UI_QUERY_TIMEOUT_S="10"))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui",
                                     headers=ADMIN_HEADERS) as client:
            yield client


async def test_ui_api_lists_effective_prices_and_flat_fees(infra, run_pricing):
    nc = await connect_nats(infra.nats_url, "test")
    try:
        with _Server(json.dumps(LITELLM_JSON).encode()) as srv:
            settings = await run_pricing(config_text(srv.url))
            await _list_until(nc, lambda a: a.status.table == "remote", "the remote table")
            async with _ui(infra, settings.config_path) as ui:
                resp = await ui.get("/api/pricing")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        models = {(m["provider"], m["model"]): m for m in body["models"]}
        assert len(models) == len(body["models"]) == 8
        assert models[("openai", "gpt-4o-mini")]["source"] == "remote"
        assert models[("openai", "gpt-4o-mini")]["price"]["input_per_mtok"] == "1"
        assert models[("openai", "gpt-4o")]["source"] == "bundled"
        assert models[("openai", "custom")]["source"] == "config"
        mystery = models[("openai", "mystery-model-xyz")]
        assert (mystery["source"], mystery["price"], mystery["free"]) == ("unknown", None, None)
        llama = models[("mygroq", "llama-3.3-70b-versatile")]
        assert llama["models"] == ["llama"] and llama["matched"] == "groq/llama-3.3-70b-versatile"
        assert models[("copilot", "gpt-4.1")]["free"] is True
        assert models[("copilot", "gpt-4.1")]["monthly_fee_usd"] == "10"
        assert body["flat_fees"] == [{"provider": "copilot", "monthly_fee_usd": "10"}]  # one plan per provider
        assert body["monthly_flat_total_usd"] == "10"
        assert body["status"]["table"] == "remote" and body["status"]["bundled_origin"].startswith("litellm")
    finally:
        await nc.close()
        await run_pricing.stop_all()


async def test_ui_api_pricing_unavailable_is_a_clear_503(infra, tmp_path):
    path = tmp_path / "llmgw.yaml"
    path.write_text(config_text(None))
    async with _ui(infra, path) as ui:
        resp = await ui.get("/api/pricing")
    assert resp.status_code == 503
    assert resp.json()["error"]["message"] == "the pricing service is not answering"


def test_subscription_provider_types_cost_nothing_at_the_margin():
    from llmgw_pricing.prices import PriceTable, effective_price

    cfg = parse_config({"providers": [
        {"id": "cli", "type": "claude_code", "models": [{"name": "sonnet"}, {"name": "paid", "price": {
            "input_per_mtok": 1}}]},
        {"id": "api", "type": "anthropic", "models": [{"name": "sonnet"}]}]})
    table = PriceTable({"sonnet": Price(input_per_mtok=Decimal(3), output_per_mtok=Decimal(15))}, "bundled")
    cli = effective_price(cfg, [table], PriceKey(provider="cli", model="sonnet"))
    assert cli.price.is_free and cli.source == "config" and "subscription" in cli.matched
    assert effective_price(cfg, [table], PriceKey(provider="cli", model="paid")).price.input_per_mtok == 1
    assert effective_price(cfg, [table], PriceKey(provider="api", model="sonnet")).price.input_per_mtok == 3
