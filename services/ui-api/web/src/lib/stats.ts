// The overview's errors and latency beyond the live windows (GET /api/usage/stats: ClickHouse): the ranges
// it offers, its rows grouped as provider then models, and how an error rate reads.

import type { StatsRow } from "./api/types";
import { num } from "./format";

export const STATS_RANGES = [
  { id: "1h", label: "1 h", s: 3600 },
  { id: "24h", label: "24 h", s: 86400 },
  { id: "7d", label: "7 d", s: 7 * 86400 },
] as const;
export type StatsRange = (typeof STATS_RANGES)[number]["id"];

export function rangeSeconds(range: StatsRange): number {
  return STATS_RANGES.find((r) => r.id === range)?.s ?? 86400;
}

export interface StatsGroup {
  provider: StatsRow;
  models: StatsRow[];
}

/** Each provider's row with its models' rows, in the order the answer has them (busiest first). */
export function statsGroups(rows: readonly StatsRow[]): StatsGroup[] {
  const groups = new Map<string, StatsGroup>();
  const group = (provider: string): StatsGroup => {
    let g = groups.get(provider);
    if (!g) {
      g = {
        provider: { provider, model: null, requests: 0, errors: 0, rate_limited: 0, error_rate: 0, tokens_in: 0,
                    tokens_cached: 0, cache_hit_rate: 0, cache_saved_usd: "0" },
        models: [],
      };
      groups.set(provider, g);
    }
    return g;
  };
  for (const row of rows) {
    if (row.model == null) group(row.provider).provider = row;
    else group(row.provider).models.push(row);
  }
  return [...groups.values()];
}

export type RateLevel = "ok" | "warn" | "over";

/** Under 1 % is fine, under 5 % worth a look, above that a problem. */
export function rateLevel(rate: number | null | undefined): RateLevel {
  const r = rate ?? 0;
  if (r < 0.01) return "ok";
  if (r < 0.05) return "warn";
  return "over";
}

/** 0.2308 -> "23.1%", 0 -> "0%", 0.0004 -> "<0.1%". */
export function formatRate(rate: number | null | undefined): string {
  const r = rate ?? 0;
  if (r <= 0) return "0%";
  if (r < 0.001) return "<0.1%";
  return `${(r * 100).toFixed(r < 0.1 ? 1 : 0)}%`;
}

export interface CacheRow {
  name: string;
  isModel: boolean;
  provider: string;
  model: string | null;
  tokensIn: number;
  tokensCached: number;
  hitRate: number;
  savedUsd: number;
}

/** Prompt caching per provider then model, from the same rows: only those that sent any prompt tokens. The hit
 * rate is the share of prompt tokens read from the provider's cache; saved is what those reads cost less than
 * the input price (UsageEvent.cache_saved_usd). */
export function cacheRows(rows: readonly StatsRow[]): CacheRow[] {
  const out: CacheRow[] = [];
  for (const g of statsGroups(rows)) {
    for (const r of [g.provider, ...g.models]) {
      const tokensIn = num(r.tokens_in) || 0;
      if (tokensIn <= 0) continue;
      out.push({
        name: r.model == null ? r.provider || "(none)" : `${r.provider}/${r.model}`,
        isModel: r.model != null,
        provider: r.provider,
        model: r.model ?? null,
        tokensIn,
        tokensCached: num(r.tokens_cached) || 0,
        hitRate: num(r.cache_hit_rate) || 0,
        savedUsd: num(r.cache_saved_usd) || 0,
      });
    }
  }
  return out;
}
