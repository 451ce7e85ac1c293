"""The benchmarks (bench/llmgw_bench): wrk's report read (real captured outputs), the results sections written."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil

import pytest

from fakes import FakeProvider
from llmgw_bench import __main__ as bench_main
from llmgw_bench import harness, quick, wrk
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
    r = wrk.parse_wrk_output(WRK_OK)
    assert r.requests_per_s == 4193.22 and r.requests == 12998
    assert r.p50_ms == pytest.approx(0.223) and r.p99_ms == pytest.approx(1.05)
    assert (r.non_2xx, r.socket_errors, r.errors) == (0, 0, 0)


def test_parse_errors():
    assert wrk.parse_wrk_output(WRK_NON_2XX).non_2xx == 15193
    r = wrk.parse_wrk_output(WRK_SOCKET_ERRORS)
    assert r.socket_errors == 108757 and r.errors == 108757
    assert r.p50_ms == pytest.approx(0.89)


def test_parse_rejects_reports_without_latency():
    without = "\n".join(line for line in WRK_OK.splitlines() if "%  " not in line)
    with pytest.raises(ValueError):
        wrk.parse_wrk_output(without)


def _runs() -> list[quick.RunResult]:
    direct = wrk.parse_wrk_output(WRK_OK)
    gateway = wrk.WrkResult(requests_per_s=1048.3, p50_ms=0.9, p99_ms=3.2, requests=3100, non_2xx=0,
                              socket_errors=0)
    return [quick.RunResult(1, "direct", direct), quick.RunResult(1, "gateway", gateway)]


def test_table_has_ratios_on_gateway_rows():
    lines = quick.results_table(_runs()).splitlines()
    assert lines[0].startswith("| concurrency | request | target | RPS | p50 | p99 | errors |")
    assert lines[2] == "| 1 | chat → OpenAI (pass-through) | direct | 4,193 | 0.22 ms | 1.05 ms | 0 |  |  |"
    assert lines[3] == "| 1 | chat → OpenAI (pass-through) | gateway | 1,048 | 0.90 ms | 3.20 ms | 0 | 0.25× | +0.68 ms |"


def test_translated_rows_compare_with_the_upstream_they_call():
    direct = wrk.WrkResult(requests_per_s=2000, p50_ms=0.5, p99_ms=1, requests=1, non_2xx=0, socket_errors=0)
    gateway = wrk.WrkResult(requests_per_s=500, p50_ms=2.5, p99_ms=4, requests=1, non_2xx=0, socket_errors=0)
    messages = "messages → Anthropic (pass-through)"
    lines = quick.results_table([quick.RunResult(10, "direct", direct, messages, messages),
                                 quick.RunResult(10, "gateway", gateway, "chat → Anthropic (translated)",
                                                 messages)]).splitlines()
    assert lines[3].endswith("| 0.25× | +2.00 ms |")


def test_results_section_replaces_the_previous_one(tmp_path):
    when = dt.datetime(2025, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
    out = tmp_path / "docs" / "benchmarks.md"
    quick.write_results(out, quick.results_section(_runs(), 10, 2, when, "2 CPUs"))
    first = out.read_text()
    assert first.startswith("# Benchmarks") and "2025-01-02 03:04 UTC" in first
    out.write_text(first.replace("# Benchmarks", "# Benchmarks\n\nHand-written notes stay.") + "\nFooter.\n")
    later = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    quick.write_results(out, quick.results_section(_runs(), 5, 2, later, "4 CPUs"))
    text = out.read_text()
    assert text.count(harness.RESULTS_START) == 1 and text.count("## Latest results") == 1
    assert "2026-01-01" in text and "2025-01-02" not in text and "4 CPUs" in text
    assert "Hand-written notes stay." in text and text.rstrip().endswith("Footer.")


def test_gateway_config_is_valid(tmp_path):
    path = tmp_path / "llmgw.yaml"
    harness.write_gateway_config(path, 18123)
    config = load_config(path)
    provider = config.provider("demo")
    assert provider.base_url == "http://127.0.0.1:18123/v1" and provider.free_tier
    assert provider.model(harness.MODEL) is not None
    anthropic = config.provider("demo-anthropic")
    assert anthropic.type == "anthropic" and anthropic.model(harness.ANTHROPIC_MODEL).upstream_name == harness.MODEL


def test_missing_wrk_is_explained(monkeypatch, capsys):
    monkeypatch.setattr(bench_main.shutil, "which", lambda _name: None)
    args = argparse.Namespace(duration=1, warmup=0, output="unused.md", api_key=None)
    assert bench_main.run_bench(args) == 2
    assert "apt-get install wrk" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_real_wrk_against_the_demo_provider(tmp_path):
    script = tmp_path / "chat.lua"
    wrk.write_wrk_script(script)
    with FakeProvider() as upstream:
        result = wrk.run_wrk(upstream.url + "/chat/completions", script, 2, 1, 1, {"Authorization": "Bearer k"})
        seen = upstream.requests[-1]
    assert result.requests > 10 and result.errors == 0 and result.p99_ms >= result.p50_ms > 0
    assert seen["body"] == harness.CHAT_BODY and seen["headers"]["authorization"] == "Bearer k"


# ---------------------------------------------------------------- make bench: the peers

from llmgw_bench import peer_install, peer_report, peers, procfs, streaming  # noqa: E402


def _site_packages(tmp_path, files: dict[str, str], records: dict[str, list[str]]):
    site = tmp_path / "site-packages"
    site.mkdir()
    for name, text in files.items():
        (site / name).write_text(text)
    for dist_info, paths in records.items():
        (site / dist_info).mkdir()
        (site / dist_info / "RECORD").write_text("".join(f"{p},sha256=x,1\n" for p in paths))
    return site


SETUPTOOLS_PTH = ("import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, 'local') == 'local'; "
                  "enabled and __import__('_distutils_hack').add_shim(); \n")


def test_pth_import_lines_are_the_ones_site_executes():
    text = "# a comment\n/some/path\nimport os; os.system('x')\nimport\tsys\nimported_name\n  import os\n"
    assert peer_install.pth_import_lines(text) == ["import os; os.system('x')", "import\tsys"]


def test_pth_inspection_allows_setuptools_shim_only(tmp_path):
    site = _site_packages(tmp_path, {
        "distutils-precedence.pth": SETUPTOOLS_PTH,
        "paths-only.pth": "/opt/extra\n",
        "litellm_init.pth": "import base64; exec(base64.b64decode('cHJpbnQoMSk='))\n",
    }, {
        "setuptools-80.9.0.dist-info": ["distutils-precedence.pth", "setuptools/__init__.py"],
        "litellm-1.80.5.dist-info": ["litellm_init.pth", "litellm/__init__.py"],
        "some_pkg-1.0.dist-info": ["paths-only.pth"],
    })
    assert peer_install.pth_owners(site)["litellm_init.pth"] == "litellm"
    problems = peer_install.unexpected_pth_hooks(site)
    assert len(problems) == 1 and problems[0].startswith("litellm_init.pth (from litellm): import base64")


def test_pth_inspection_refuses_the_allowed_name_from_another_package(tmp_path):
    site = _site_packages(tmp_path, {"distutils-precedence.pth": "import evil\n"},
                          {"not_setuptools-1.0.dist-info": ["distutils-precedence.pth"]})
    assert peer_install.unexpected_pth_hooks(site) == ["distutils-precedence.pth (from not-setuptools): import evil"]
    (site / "orphan.pth").write_text("import x\n")
    assert "orphan.pth (from no installed package): import x" in peer_install.unexpected_pth_hooks(site)


def test_clean_site_packages_passes(tmp_path):
    site = _site_packages(tmp_path, {"distutils-precedence.pth": SETUPTOOLS_PTH},
                          {"setuptools-65.5.0.dist-info": ["distutils-precedence.pth"]})
    assert peer_install.unexpected_pth_hooks(site) == []


def test_installed_version_reads_dist_info_names(tmp_path):
    site = _site_packages(tmp_path, {}, {"litellm-1.80.5.dist-info": [], "litellm_proxy_extras-0.4.3.dist-info": []})
    assert peer_install.installed_version(site, "litellm") == "1.80.5"
    assert peer_install.installed_version(site, "litellm-proxy-extras") == "0.4.3"
    assert peer_install.installed_version(site, "fastapi") is None


def test_portkey_manifest_pins_and_overrides_node_server(tmp_path):
    manifest = peer_install.portkey_package_json()
    assert manifest["dependencies"]["@portkey-ai/gateway"] == "1.15.2"
    assert manifest["overrides"] == {"@hono/node-server": "1.13.8"}
    modules = tmp_path / "node_modules"
    for where, version in [("@hono/node-server", "1.13.8"),
                           ("@hono/node-ws/node_modules/@hono/node-server", "1.19.0")]:
        (modules / where).mkdir(parents=True)
        (modules / where / "package.json").write_text(f'{{"name": "@hono/node-server", "version": "{version}"}}')
    assert peer_install.package_versions(modules, "@hono/node-server") == {"1.13.8", "1.19.0"}


# a real /proc/<pid>/stat line, and one whose command name has spaces and parentheses
PROC_STAT = ("5150 (cat) R 5146 5146 24369 0 -1 4194304 128 0 0 0 37 12 0 0 20 0 1 0 416262 3133440 383 "
             "18446744073709551615 94391903178752 94391903198633 140732265337968 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0")


def test_parse_proc_stat():
    st = procfs.parse_proc_stat(PROC_STAT)
    assert (st.pid, st.comm, st.ppid, st.cpu_ticks) == (5150, "cat", 5146, 49)
    odd = procfs.parse_proc_stat(PROC_STAT.replace("(cat)", "(a) b (c)"))
    assert odd.comm == "a) b (c" and odd.ppid == 5146 and odd.cpu_ticks == 49


def test_parse_status_and_smaps():
    assert procfs.parse_vmrss_kib("Name:\tpython\nVmPeak:\t 900 kB\nVmRSS:\t  123456 kB\nRssAnon: 1 kB\n") == 123456
    assert procfs.parse_vmrss_kib("Name:\tkthreadd\nState:\tS\n") == 0
    smaps = ("7f00-7f10 r-xp 00000000 fe:00 1 /venv/site-packages/chdb/_chdb.abi3.so\n"
             "Size:   64 kB\nRss:    40 kB\nPss:    40 kB\n"
             "7f10-7f20 rw-p 00000000 00:00 0 \nSize: 64 kB\nRss: 1000 kB\n"
             "7f20-7f30 r--p 00000000 fe:00 2 /venv/site-packages/chdb_core.libs/libx.so\nRss:    2 kB\n"
             "7f30-7f40 r--p 00000000 fe:00 3 /usr/lib/libc.so.6\nRss:    7 kB\n")
    assert procfs.smaps_rss_kib(smaps, "/chdb") == 42
    assert procfs.smaps_rss_kib(smaps, "libc") == 7


def test_descendants_and_cpu_between_snapshots():
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1}
    assert sorted(procfs.descendants(10, parents)) == [10, 11, 12, 13]
    hz = procfs.os.sysconf("SC_CLK_TCK")
    before = {10: 100, 11: 50, 12: 7}
    after = {10: 100 + hz, 11: 50 + hz, 13: hz}  # 12 exited, 13 started
    assert procfs.cpu_seconds_between(before, after) == pytest.approx(3.0)
    # per process, per request: same labels added up, largest first
    labels = {10: "edge", 11: "router", 12: "edge", 13: "usage"}
    by_process = procfs.cpu_ms_by_process(before, after, labels, requests=1000)
    assert by_process == [("edge", pytest.approx(1.0)), ("router", pytest.approx(1.0)),
                          ("usage", pytest.approx(1.0))]
    result = peer_report.SystemResult("this gateway", cpu_by_process=[("edge", 0.31), ("router", 0.2)])
    assert peer_report.cpu_lines([result]) == ["- this gateway: edge 0.310, router 0.200"]


def test_process_labels():
    py = "/work/.venv/bin/python"
    assert procfs.process_label([py, "-m", "llmgw_cli.main", "run", "--config", "x"]) == "runner"
    assert procfs.process_label([py, "-m", "llmgw_cli.main", "usage"]) == "usage"
    assert procfs.process_label(["/venv/bin/nats-server", "-a", "127.0.0.1"]) == "nats-server"
    assert procfs.process_label(["/usr/bin/redis-server 127.0.0.1:6379"]) == "redis"
    assert procfs.process_label(["/b/python3", "/b/litellm", "--config", "c"]) == "litellm"
    assert procfs.process_label(["/b/python3", "-B", "-c", "from multiprocessing.spawn import spawn_main"]) == "worker"
    assert procfs.process_label(["node", "--require", "l.cjs", "start-server.js"]) == "node"


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            b"connection: keep-alive\r\n\r\n")


def test_streamed_response_time_to_first_data_line_fed_byte_by_byte():
    body = _chunked(b": keep-alive comment\n\n", b'data: {"choices": []}\n\n', b"data: [DONE]\n\n")
    wire = SSE_HEAD + body
    first_data = len(SSE_HEAD) + wire[len(SSE_HEAD):].index(b"data:")
    response = streaming.StreamedResponse()
    for i in range(len(wire)):
        assert not response.done
        response.feed(wire[i:i + 1], now=float(i))
    assert response.status == 200 and response.done and response.keep_alive
    # the first "data:" line is recognised when its ":" arrives (the chunk's bytes reach the reader one by one)
    assert response.first_data_at == float(first_data + len("data:") - 1)


def test_streamed_response_in_two_reads_and_other_framings():
    response = streaming.StreamedResponse()
    response.feed(SSE_HEAD[:20], now=1.0)
    response.feed(SSE_HEAD[20:] + b"e\r\ndata: {\"a\": 1}\r\n", now=2.5)
    assert response.first_data_at == 2.5 and not response.done
    response.feed(b"0\r\n\r\n", now=3.0)
    assert response.done

    sized = b'data: {"x": 1}\n\ndata: [DONE]\n\n'
    response = streaming.StreamedResponse()
    response.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(sized) + sized[:5], now=1.0)
    assert response.first_data_at == 1.0 and not response.done
    response.feed(sized[5:], now=2.0)
    assert response.done and response.keep_alive

    closed = streaming.StreamedResponse()
    closed.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: 1\n\n", now=1.0)
    assert not closed.done
    closed.eof()
    assert closed.done and not closed.keep_alive and closed.first_data_at == 1.0

    refused = streaming.StreamedResponse()
    refused.feed(b'HTTP/1.1 429 Too Many Requests\r\nContent-Length: 13\r\n\r\n{"error": "x"}', now=1.0)
    assert refused.status == 429 and refused.done and refused.first_data_at is None


def test_percentile_nearest_rank():
    assert streaming.percentile([5.0], 50) == 5.0
    assert streaming.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert streaming.percentile(list(map(float, range(1, 101))), 99) == 99.0


def test_measure_ttfb_against_the_demo_provider():
    with FakeProvider(delay_s=0.02) as upstream:
        run = streaming.measure_ttfb(upstream.url + "/chat/completions", harness.CHAT_BODY, {"Authorization": "Bearer k"},
                                 concurrency=3, duration_s=0.5)
        assert upstream.requests[-1]["body"]["stream"] is True
    assert run.errors == 0 and len(run.ttfb_s) >= 3
    assert all(0.015 <= t < 2 for t in run.ttfb_s)  # the provider waits 20 ms (asyncio's clock)


def _wrk(rps: float, p50: float, requests: int = 1000) -> wrk.WrkResult:
    return wrk.WrkResult(requests_per_s=rps, p50_ms=p50, p99_ms=p50 * 3, requests=requests, non_2xx=0,
                           socket_errors=0)


def _peer_results() -> list:
    direct = peer_report.SystemResult("direct to upstream", wrk={1: _wrk(6000, 0.15), 10: _wrk(11000, 0.8),
                                                           50: _wrk(10000, 4.5)},
                                ttfb_p50_ms=0.9, streams=5000, cpu_ms_per_request=0.08,
                                memory=[procfs.ProcessMemory(1, "demo provider", 40 * 1024, 0)])
    ours = peer_report.SystemResult("this gateway (usage logging on)", wrk={1: _wrk(450, 2.2), 10: _wrk(900, 9.5),
                                                                      50: _wrk(950, 50)},
                              ttfb_p50_ms=7.25, streams=900, stream_errors=1, cpu_ms_per_request=2.1,
                              memory=[procfs.ProcessMemory(2, "edge", 100 * 1024, 0),
                                      procfs.ProcessMemory(3, "usage", 500 * 1024, 300 * 1024)])
    missing = peer_report.SystemResult("Portkey gateway 1.15.2", status="not installed: npm install failed: E404")
    return [direct, missing, ours]


def test_peers_table_rows():
    lines = peer_report.peers_table(_peer_results()).splitlines()
    assert lines[0] == ("| system | RPS c=1 | RPS c=10 | RPS c=50 | added p50 c=1 | stream TTFB p50 c=10 | "
                        "CPU ms/request c=10 | idle RSS, all processes |")
    assert lines[2] == "| direct to upstream | 6,000 | 11,000 | 10,000 | (baseline) | 0.90 ms | 0.08 | 40 MB |"
    assert lines[3] == ("| Portkey gateway 1.15.2 | not installed: npm install failed: E404 | — | — | — | — | — "
                        "| — |")
    assert lines[4] == ("| this gateway (usage logging on) | 450 | 900 | 950 | +2.05 ms | 7.25 ms | 2.10 | "
                        "600 MB (300 MB without chDB's library pages) |")
    latency = peer_report.latency_table(_peer_results()).splitlines()
    assert latency[3] == ("| this gateway (usage logging on) | 2.20 / 6.60 ms | 9.50 / 28.50 ms | 50.00 / 150.00 ms | 0 "
                          "| 900 (1) |")
    assert len(latency) == 4  # no row for a system that was not measured
    # with the heap chDB takes on opening known (measured in a separate process), the engine is left out whole
    results = _peer_results()
    results[-1].chdb_heap_kib = 40 * 1024
    assert peer_report.peers_table(results).splitlines()[4].endswith(
        "| 600 MB (260 MB without the chDB engine: 300 MB library pages, 40 MB heap) |")


def test_peers_section_goes_before_the_quick_results_and_is_replaced(tmp_path):
    out = tmp_path / "benchmarks.md"
    when = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc)
    quick.write_results(out, quick.results_section(_runs(), 10, 2, when, "2 CPUs"))
    out.write_text(out.read_text().replace("# Benchmarks", "# Benchmarks\n\nHand-written notes stay."))

    def section(machine: str) -> str:
        return peer_report.peers_section(_peer_results(), when=when, machine=machine, load_after="1.00 0.90 0.80",
                                   duration_s=8, warmup_s=5, stream_s=5, elapsed_s=290)

    peer_report.write_peers(out, section("2 CPUs (Xeon)"))
    text = out.read_text()
    assert text.index(peer_report.PEERS_START) < text.index(harness.RESULTS_START)
    assert "Hand-written notes stay." in text and "2 CPUs (Xeon); load average 1.00 0.90 0.80 at the end" in text
    assert "- this gateway (usage logging on): edge 100 MB, usage 500 MB (chDB library 300 MB)" in text
    peer_report.write_peers(out, section("4 CPUs (EPYC)"))
    again = out.read_text()
    assert again.count(peer_report.PEERS_START) == 1 and "4 CPUs (EPYC)" in again and "Xeon" not in again
    assert again.count(harness.RESULTS_START) == 1 and "Hand-written notes stay." in again


def test_litellm_config_points_at_the_upstream_with_logging_off():
    config = peers.litellm_config(18123)
    params = config["model_list"][0]["litellm_params"]
    assert config["model_list"][0]["model_name"] == harness.MODEL
    assert params == {"model": "openai/demo-chat", "api_base": "http://127.0.0.1:18123/v1", "api_key": "dummy"}
    assert config["litellm_settings"]["telemetry"] is False
    assert config["general_settings"]["disable_spend_logs"] is True
    assert peers.portkey_headers(18123)["x-portkey-custom-host"] == "http://127.0.0.1:18123/v1"


def test_peers_install_failure_is_a_reason_not_an_exception(tmp_path, monkeypatch):
    monkeypatch.setattr(peer_install.shutil, "which", lambda _name: None)
    install = peer_install.install_portkey(tmp_path, lambda _msg: None)
    assert not install.ok and install.detail == "node not found (apt-get install nodejs npm)"


def test_install_failure_reason_is_short():
    pip_output = ("WARNING: Location 'file:///x' is ignored\n"
                  "ERROR: Could not find a version that satisfies the requirement litellm[proxy]==9.9 "
                  "(from versions: 0.1.0, 0.1.1, 1.80.5)\nERROR: No matching distribution found for litellm[proxy]==9.9\n")
    assert peer_install._last_error(pip_output) == (
        "ERROR: Could not find a version that satisfies the requirement litellm[proxy]==9.9 "
        "ERROR: No matching distribution found for litellm[proxy]==9.9")


# ---------------------------------------------------------------- make bench: Redis per request, the limited row

from llmgw_bench import redis_load, redis_stats  # noqa: E402


def test_redis_commands_are_summed_without_the_measurements_own():
    before = redis_stats.calls_of({"cmdstat_evalsha": {"calls": 10, "usec": 5}, "cmdstat_hincrby": {"calls": 40},
                                   "cmdstat_info": {"calls": 3}})
    after = redis_stats.calls_of({"cmdstat_evalsha": {"calls": 30}, "cmdstat_hincrby": {"calls": 120},
                                  "cmdstat_zadd": {"calls": 5}, "cmdstat_info": {"calls": 9},
                                  "cmdstat_eval_ro": {"calls": 2}})
    assert before == redis_stats.RedisCalls(commands=50, scripts=10)
    assert after - before == redis_stats.RedisCalls(commands=107, scripts=22)
    assert (after - before).per_request(100) == (1.07, 0.22)


def test_gateway_redis_url_comes_from_the_runners_runtime_file(tmp_path):
    assert redis_stats.gateway_redis_url(tmp_path) is None
    (tmp_path / "runtime.json").write_text('{"redis_url": "redis://127.0.0.1:40001/0", "pid": 1}')
    assert redis_stats.gateway_redis_url(tmp_path) == "redis://127.0.0.1:40001/0"


def test_redis_lines_in_the_peers_section(tmp_path):
    results = _peer_results()
    results[-1].redis_per_request = (12.5, 1.02)
    limited = peer_report.SystemResult("this gateway, a limit on the route (1,000,000 requests/min)",
                                       wrk={10: _wrk(880, 9.8)}, redis_note="Redis could not be read")
    results.append(limited)
    assert peer_report.redis_lines(results) == [
        "- this gateway (usage logging on): 12.50 commands per request (1.02 script runs; commands inside "
        "scripts included)",
        "- this gateway, a limit on the route (1,000,000 requests/min): Redis could not be read"]
    section = peer_report.peers_section(results, when=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
                                        machine="2 CPUs", load_after="1.00", duration_s=8, warmup_s=5, stream_s=5,
                                        elapsed_s=300)
    assert "Redis per request (INFO commandstats over the concurrency-10 run; goal < 0.2):" in section
    assert "| this gateway, a limit on the route (1,000,000 requests/min) | — | 880 |" in section
    # a run without a gateway measured (none of its rows) says nothing about Redis
    assert "Redis per request" not in peer_report.peers_section(
        results[:1], when=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), machine="2 CPUs", load_after="1.00",
        duration_s=8, warmup_s=5, stream_s=5, elapsed_s=300)


def test_limited_gateway_config_puts_the_limit_on_the_benchmarked_route(tmp_path):
    path = tmp_path / "llmgw.yaml"
    harness.write_gateway_config(path, 18123, requests_per_minute=peers.LIMITED_PER_MINUTE)
    config = load_config(path)
    assert config.provider("demo").limits.requests_per_minute == 1_000_000
    assert config.provider("demo-anthropic").limits.requests_per_minute is None
    assert not config.routing.leases
    harness.write_gateway_config(path, 18123)
    assert load_config(path).provider("demo").limits.requests_per_minute is None
    # the peer bench's limited row: admitted from capacity leases
    harness.write_gateway_config(path, 18123, requests_per_minute=peers.LIMITED_PER_MINUTE, leases=True)
    assert load_config(path).routing.leases


def test_redis_commands_are_charged_to_the_script_that_ran_them():
    scripts = redis_load.known_scripts()
    outcomes = next(sha for sha, name in scripts.items() if name == "router OUTCOMES_OK_LUA")
    lines = ['1.1 [0 lua] "GET" "x"',  # the end of a script that started before the listening did
             f'1.2 [0 127.0.0.1:5] "EVALSHA" "{outcomes}" "0" "0.2"',
             '1.3 [0 lua] "ZREM" "llmgw:inflight:p" "r1"', '1.4 [0 lua] "SET" "llmgw:lat:p" "3"',
             '1.5 [0 127.0.0.1:6] "PING"', '1.6 [0 127.0.0.1:7] "INFO" "commandstats"',
             '1.7 [0 127.0.0.1:5] "SCRIPT" "EXISTS" "ab"']
    assert redis_load.charge(lines, scripts) == {
        "script ?: commands inside": 1, "router OUTCOMES_OK_LUA: runs": 1,
        "router OUTCOMES_OK_LUA: commands inside": 2, "ping": 1, "script exists": 1}
