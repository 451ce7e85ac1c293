import { describe, expect, it } from "vitest";
import { decodeLive, SseParser } from "../src/lib/sse";

describe("the SSE parser", () => {
  it("splits events, joins data lines, names the event", () => {
    const p = new SseParser();
    const events = p.push('event: usage\ndata: {"a":\ndata: 1}\n\n: keep-alive\n\ndata: plain\n\n');
    expect(events).toEqual([
      { event: "usage", data: '{"a":\n1}', id: null },
      { event: "message", data: "plain", id: null },
    ]);
  });
  it("handles chunks cut anywhere and CRLF", () => {
    const p = new SseParser();
    const text = "event: health\r\ndata: {\"providers\": []}\r\nid: 7\r\n\r\n";
    const out = [];
    for (const ch of text) out.push(...p.push(ch));
    expect(out).toEqual([{ event: "health", data: '{"providers": []}', id: "7" }]);
    expect(p.lastEventId).toBe("7");
  });
  it("reads retry and ignores unknown fields and empty events", () => {
    const p = new SseParser();
    expect(p.push("retry: 3000\nfoo: bar\n\n")).toEqual([]);
    expect(p.retryMs).toBe(3000);
  });
});

describe("live events", () => {
  it("usage: scopes, limits and recent", () => {
    const m = decodeLive("usage", JSON.stringify({
      at: "2025-01-01T00:00:00Z",
      scopes: [{ scope: "provider", provider: "p1", model: null, windows: { minute: { requests: 2, tokens_in: 10, tokens_out: 5, cost_usd: "0.01" } } },
               { nonsense: true }],
      limits: { p1: {} },
      recent: [{ id: "e1", provider: "p1", status: 200 }],
    }));
    expect(m?.type).toBe("usage");
    if (m?.type !== "usage") throw new Error();
    expect(m.data.scopes).toHaveLength(1);
    expect(m.data.recent).toHaveLength(1);
    expect(m.data.at).toBe("2025-01-01T00:00:00Z");
  });
  it("health: a list or a map of providers", () => {
    const list = decodeLive("health", '{"providers": [{"id": "p1", "breaker": "open"}], "pinned": "p1"}');
    expect(list).toEqual({ type: "health", data: { providers: [{ id: "p1", breaker: "open" }], pinned: "p1" } });
    const map = decodeLive("health", '{"providers": {"p2": {"breaker": "closed", "inflight": 1}}, "smart": true}');
    expect(map).toEqual({ type: "health", data: { providers: [{ id: "p2", breaker: "closed", inflight: 1 }], smart: true } });
  });
  it("refuses what it cannot use", () => {
    expect(decodeLive("usage", "not json")).toBeNull();
    expect(decodeLive("usage", '{"at": "x"}')).toBeNull();
    expect(decodeLive("other", "{}")).toBeNull();
    expect(decodeLive("health", "[1]")).toBeNull();
  });
});
