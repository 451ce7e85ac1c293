import { describe, expect, it } from "vitest";
import type { StatsRow } from "../src/lib/api/types";
import { cacheRows, formatRate, rateLevel, statsGroups } from "../src/lib/stats";

const row = (provider: string, model: string | null, requests: number, errors = 0): StatsRow =>
  ({ provider, model, requests, errors, rate_limited: 0, error_rate: requests ? errors / requests : 0, tokens_in: 0,
     tokens_cached: 0, cache_hit_rate: 0, cache_saved_usd: "0" });

describe("errors and latency per provider and model", () => {
  it("each provider with its models, in the answer's order", () => {
    const groups = statsGroups([row("a", null, 10), row("a", "m1", 7), row("a", "m2", 3), row("b", null, 2), row("b", "m1", 2)]);
    expect(groups.map((g) => [g.provider.provider, g.provider.requests, g.models.map((m) => m.model)])).toEqual([
      ["a", 10, ["m1", "m2"]], ["b", 2, ["m1"]]]);
  });
  it("a model whose provider row was cut off still shows under its provider", () => {
    const [g] = statsGroups([row("c", "m", 1)]);
    expect(g.provider.provider).toBe("c");
    expect(g.models.length).toBe(1);
  });
  it("error rates in words and colours", () => {
    expect([formatRate(0), formatRate(0.0004), formatRate(0.0231), formatRate(0.25)]).toEqual(["0%", "<0.1%", "2.3%", "25%"]);
    expect([rateLevel(0), rateLevel(0.02), rateLevel(0.3)]).toEqual(["ok", "warn", "over"]);
  });
});

describe("prompt caching per provider and model", () => {
  it("hit rate and savings, provider before its models, rows without prompt tokens left out", () => {
    const cached = (r: StatsRow, tokens_in: number, tokens_cached: number, saved: string): StatsRow =>
      ({ ...r, tokens_in, tokens_cached, cache_hit_rate: tokens_in ? tokens_cached / tokens_in : 0, cache_saved_usd: saved });
    const rows = cacheRows([cached(row("a", null, 3), 2000, 900, "0.0027"), cached(row("a", "m1", 2), 1000, 900, "0.0027"),
      cached(row("a", "m2", 1), 1000, 0, "0"), cached(row("b", null, 1), 0, 0, "0"), cached(row("b", "e", 1), 0, 0, "0")]);
    expect(rows.map((r) => [r.name, r.isModel, r.hitRate, r.savedUsd])).toEqual([
      ["a", false, 0.45, 0.0027], ["a/m1", true, 0.9, 0.0027], ["a/m2", true, 0, 0]]);
  });
});
