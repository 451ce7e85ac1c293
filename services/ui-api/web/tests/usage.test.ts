import { describe, expect, it } from "vitest";
import type { HistoryRow, ProviderState, ScopeUsage } from "../src/lib/api/types";
import {
  bucketSeries, buildOverview, hasLimits, minuteSeries, recentSamples, spanBuckets, spanBucketS, spanLabel, sparkPoints, totals,
} from "../src/lib/usage";

const state: ProviderState[] = [{
  id: "p1", free_tier: true, enabled: true, breaker: "closed",
  windows: { minute: { requests: 1, requests_limit: 10, tokens: 100, tokens_limit: null, cost_usd: "0.5", cost_limit_usd: "1" } },
  models: [{ name: "m", upstream: "m-up", windows: { minute: { requests: 1, requests_limit: 5, tokens: 100, tokens_limit: 1000, cost_usd: "0", cost_limit_usd: null } } }],
}];

describe("the overview", () => {
  it("limits from the router's state, counts from the live scopes", () => {
    const scopes: ScopeUsage[] = [
      { scope: "provider", provider: "p1", windows: { minute: { requests: 8, tokens_in: 300, tokens_out: 200, cost_usd: "0.95" } } },
      { scope: "model", provider: "p1", model: "m", windows: { minute: { requests: 4, tokens_in: 1, tokens_out: 2, cost_usd: "0" } } },
      { scope: "provider", provider: "gone", windows: { day: { requests: 3, tokens_in: 0, tokens_out: 0, cost_usd: "0" } } },
      { scope: "key", provider: "abcdefabcdef", windows: {} },
    ];
    const blocks = buildOverview(state, scopes);
    expect(blocks.map((b) => b.provider)).toEqual(["p1", "gone"]);
    const p1 = blocks[0];
    expect(p1.free).toBe(true);
    expect(p1.windows.minute.requests).toEqual({ used: 8, limit: 10 });
    expect(p1.windows.minute.tokens).toEqual({ used: 500, limit: null });
    expect(p1.windows.minute.cost).toEqual({ used: 0.95, limit: 1 });
    expect(p1.models[0].windows.minute.requests).toEqual({ used: 4, limit: 5 });
    expect(blocks[1].windows.day.requests.used).toBe(3);
    expect(totals(blocks, "minute").requests).toBe(8);
  });
  it("the live event's limits win over the router's", () => {
    const limits = { p1: { limits: { requests_per_minute: 20, cost_per_day: "5" }, models: { m: { requests_per_minute: 2 } } } };
    const p1 = buildOverview(state, [], limits)[0];
    expect(p1.windows.minute.requests.limit).toBe(20);
    expect(p1.windows.minute.cost.limit).toBeNull();
    expect(p1.windows.day.cost.limit).toBe(5);
    expect(p1.models[0].windows.minute.requests.limit).toBe(2);
  });
  it("a provider or model without any limit is told apart (its numbers take one line, no striped bars)", () => {
    const [p1] = buildOverview([...state, { id: "free", models: [{ name: "x" }] }], null);
    expect(hasLimits(p1)).toBe(true);
    expect(hasLimits(p1.models[0])).toBe(true);
    const unlimited = buildOverview([{ id: "free", models: [{ name: "x" }] }], null)[0];
    expect(hasLimits(unlimited)).toBe(false);
    expect(hasLimits(unlimited.models[0])).toBe(false);
    expect(hasLimits(buildOverview([{ id: "free" }], null, { free: { limits: { tokens_per_day: 10 } } })[0])).toBe(true);
  });
  it("without live scopes the router's counts stand", () => {
    expect(buildOverview(state, null)[0].windows.minute.requests.used).toBe(1);
  });
});

const SPANS_SHOWN = [1, 5, 10, 30, 60, 1440, 10080] as const;

describe("sparklines", () => {
  const now = Date.parse("2025-01-01T12:10:30Z");
  const row = (minute: string, provider: string, model: string, requests: number): HistoryRow => ({
    bucket: `2025-01-01T12:${minute}:00Z`, provider, model, requests, errors: 0, tokens_in: 10, tokens_out: 5, cost_usd: "0.001",
  } as HistoryRow);
  const rows = [row("10", "p1", "a", 3), row("10", "p1", "b", 1), row("08", "p1", "a", 2), row("01", "p1", "a", 9), row("09", "p2", "a", 7)];
  it("per-minute values, oldest first, zeros between", () => {
    expect(minuteSeries(rows, "p1", null, 5, "requests", now)).toEqual([0, 0, 2, 0, 4]);
    expect(minuteSeries(rows, "p1", "a", 5, "requests", now)).toEqual([0, 0, 2, 0, 3]);
    expect(minuteSeries(rows, "p1", null, 10, "requests", now)[0]).toBe(9);
    expect(minuteSeries(rows, "p1", null, 1, "tokens", now)).toEqual([30]);
  });
  it("24 h and 7 d from coarser buckets, aligned as the history's", () => {
    expect(SPANS_SHOWN.map(spanLabel)).toEqual(["1 min", "5 min", "10 min", "30 min", "60 min", "24 h", "7 d"]);
    expect([spanBucketS(60), spanBucketS(1440), spanBucketS(10080)]).toEqual([60, 1800, 10800]);
    expect([spanBuckets(60), spanBuckets(1440), spanBuckets(10080)]).toEqual([60, 48, 56]);
    const at = (iso: string, requests: number) => ({ bucket: iso, provider: "p1", model: "a", requests, errors: 0,
      tokens_in: 0, tokens_out: 0, cost_usd: "0" } as HistoryRow);
    const day = [at("2025-01-01T12:00:00Z", 4), at("2025-01-01T11:30:00Z", 2), at("2024-12-31T12:00:00Z", 8), at("2024-12-31T13:00:00Z", 1)];
    const series = bucketSeries(day, "p1", null, 48, 1800, "requests", now);
    expect(series.length).toBe(48);
    expect(series.slice(-3)).toEqual([0, 2, 4]); // 11:00, 11:30, 12:00 (now is 12:10)
    expect(series.slice(0, 2)).toEqual([0, 1]); // 2024-12-31T13:00 is the second; 12:00 is a day and a bucket back: out
    expect(series.reduce((a, b) => a + b, 0)).toBe(7);
  });
  it("live samples of the last minute", () => {
    const samples = [{ t: now - 90_000, v: 1 }, { t: now - 30_000, v: 2 }, { t: now, v: 3 }];
    expect(recentSamples(samples, 60, now)).toEqual([2, 3]);
  });
  it("points fill the box", () => {
    expect(sparkPoints([0, 5, 10], 100, 20, 0)).toBe("0.0,20.0 50.0,10.0 100.0,0.0");
    expect(sparkPoints([0, 0], 100, 20, 0)).toBe("0.0,20.0 100.0,20.0");
    expect(sparkPoints([], 100, 20)).toBe("");
  });
});
