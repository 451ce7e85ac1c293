"""``llmgw bench``: reading wrk's report (real captured outputs) and writing the results section."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil

import pytest

from fakes import FakeProvider
from llmgw_cli import bench
from llmgw_common.config import load_config

# wrk 4.1.0 against the demo provider, 1 connection
WRK_OK = """\
Running 3s test @ http://127.0.0.1:18556/v1/chat/completions
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   255.76us  219.03us   4.31ms   98.25%
    Req/Sec     4.22k   254.96     4.38k    93.55%
  Latency Distribution
     50%  223.00us
     75%  241.00us
     90%  257.00us
     99%    1.05ms
  12998 requests in 3.10s, 9.54MB read
Requests/sec:   4193.22
Transfer/sec:      3.08MB
"""

# against an unknown path: every answer a 404
WRK_NON_2XX = """\
Running 2s test @ http://127.0.0.1:18556/v1/nope
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   279.58us  103.31us   3.30ms   97.88%
    Req/Sec     7.27k    86.53     7.40k    66.67%
  Latency Distribution
     50%  265.00us
     75%  283.00us
     90%  294.00us
     99%  406.00us
  15193 requests in 2.10s, 4.12MB read
  Non-2xx or 3xx responses: 15193
Requests/sec:   7234.61
Transfer/sec:      1.96MB
"""

# the server killed one second into the run
WRK_SOCKET_ERRORS = """\
Running 3s test @ http://127.0.0.1:18559/v1/chat/completions
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.97ms  297.74us   6.21ms   94.09%
    Req/Sec     4.03k   653.89     4.65k    90.91%
  Latency Distribution
     50%    0.89ms
     75%    0.97ms
     90%    1.15ms
     99%    1.92ms
  4400 requests in 3.00s, 3.23MB read
  Socket errors: connect 0, read 4, write 108753, timeout 0
Requests/sec:   1466.28
Transfer/sec:      1.08MB
"""


def test_parse_successful_run():
    r = bench.parse_wrk_output(WRK_OK)
    assert r.requests_per_s == 4193.22 and r.requests == 12998
    assert r.p50_ms == pytest.approx(0.223) and r.p99_ms == pytest.approx(1.05)
    assert (r.non_2xx, r.socket_errors, r.errors) == (0, 0, 0)


def test_parse_errors():
    assert bench.parse_wrk_output(WRK_NON_2XX).non_2xx == 15193
    r = bench.parse_wrk_output(WRK_SOCKET_ERRORS)
    assert r.socket_errors == 108757 and r.errors == 108757
    assert r.p50_ms == pytest.approx(0.89)


def test_parse_rejects_reports_without_latency():
    without = "\n".join(line for line in WRK_OK.splitlines() if "%  " not in line)
    with pytest.raises(ValueError):
        bench.parse_wrk_output(without)


def _runs() -> list[bench.RunResult]:
    direct = bench.parse_wrk_output(WRK_OK)
    gateway = bench.WrkResult(requests_per_s=1048.3, p50_ms=0.9, p99_ms=3.2, requests=3100, non_2xx=0,
                              socket_errors=0)
    return [bench.RunResult(1, "direct", direct), bench.RunResult(1, "gateway", gateway)]


def test_table_has_ratios_on_gateway_rows():
    lines = bench.results_table(_runs()).splitlines()
    assert lines[0].startswith("| concurrency | request | target | RPS | p50 | p99 | errors |")
    assert lines[2] == "| 1 | chat → OpenAI (pass-through) | direct | 4,193 | 0.22 ms | 1.05 ms | 0 |  |  |"
    assert lines[3] == "| 1 | chat → OpenAI (pass-through) | gateway | 1,048 | 0.90 ms | 3.20 ms | 0 | 0.25× | +0.68 ms |"


def test_translated_rows_compare_with_the_upstream_they_call():
    direct = bench.WrkResult(requests_per_s=2000, p50_ms=0.5, p99_ms=1, requests=1, non_2xx=0, socket_errors=0)
    gateway = bench.WrkResult(requests_per_s=500, p50_ms=2.5, p99_ms=4, requests=1, non_2xx=0, socket_errors=0)
    messages = "messages → Anthropic (pass-through)"
    lines = bench.results_table([bench.RunResult(10, "direct", direct, messages, messages),
                                 bench.RunResult(10, "gateway", gateway, "chat → Anthropic (translated)",
                                                 messages)]).splitlines()
    assert lines[3].endswith("| 0.25× | +2.00 ms |")


def test_results_section_replaces_the_previous_one(tmp_path):
    when = dt.datetime(2025, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
    out = tmp_path / "docs" / "benchmarks.md"
    bench.write_results(out, bench.results_section(_runs(), 10, 2, when, "2 CPUs"))
    first = out.read_text()
    assert first.startswith("# Benchmarks") and "2025-01-02 03:04 UTC" in first
    out.write_text(first.replace("# Benchmarks", "# Benchmarks\n\nHand-written notes stay.") + "\nFooter.\n")
    later = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    bench.write_results(out, bench.results_section(_runs(), 5, 2, later, "4 CPUs"))
    text = out.read_text()
    assert text.count(bench.RESULTS_START) == 1 and text.count("## Latest results") == 1
    assert "2026-01-01" in text and "2025-01-02" not in text and "4 CPUs" in text
    assert "Hand-written notes stay." in text and text.rstrip().endswith("Footer.")


def test_gateway_config_is_valid(tmp_path):
    path = tmp_path / "llmgw.yaml"
    bench.write_gateway_config(path, 18123)
    config = load_config(path)
    provider = config.provider("demo")
    assert provider.base_url == "http://127.0.0.1:18123/v1" and provider.free_tier
    assert provider.model(bench.MODEL) is not None
    anthropic = config.provider("demo-anthropic")
    assert anthropic.type == "anthropic" and anthropic.model(bench.ANTHROPIC_MODEL).upstream_name == bench.MODEL


def test_missing_wrk_is_explained(monkeypatch, capsys):
    monkeypatch.setattr(bench.shutil, "which", lambda _name: None)
    args = argparse.Namespace(duration=1, warmup=0, output="unused.md", api_key=None)
    assert bench.run_bench(args) == 2
    assert "apt-get install wrk" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_real_wrk_against_the_demo_provider(tmp_path):
    script = tmp_path / "chat.lua"
    bench.write_wrk_script(script)
    with FakeProvider() as upstream:
        result = bench.run_wrk(upstream.url + "/chat/completions", script, 2, 1, 1, {"Authorization": "Bearer k"})
        seen = upstream.requests[-1]
    assert result.requests > 10 and result.errors == 0 and result.p99_ms >= result.p50_ms > 0
    assert seen["body"] == bench.CHAT_BODY and seen["headers"]["authorization"] == "Bearer k"
