// The overview's numbers: each provider and model with its requests, tokens and cost per window next to
// its configured limits (limits from the router's state, counts from the freshest of the router's state
// and the live usage event), and sparkline series from the per-minute history.

import { num } from "./format";
import type { HistoryRow, ProviderState, ScopeUsage, WindowName, WindowVsLimit } from "./api/types";
import { WINDOWS } from "./api/types";

export type Metric = "requests" | "tokens" | "cost";
export const METRICS: Metric[] = ["requests", "tokens", "cost"];

export interface Cell {
  used: number;
  limit: number | null;
}

export type WindowCells = Record<Metric, Cell>;

export interface UsageRow {
  provider: string;
  model: string | null; // null: the provider as a whole
  upstream?: string;
  free: boolean;
  enabled: boolean;
  windows: Record<WindowName, WindowCells>;
}

export interface ProviderBlock extends UsageRow {
  health: ProviderState | null;
  models: UsageRow[];
}

function limitOf(v: unknown): number | null {
  const n = num(v);
  return v == null || !Number.isFinite(n) ? null : n;
}

function cellsFromState(w: WindowVsLimit | undefined): WindowCells {
  return {
    requests: { used: num(w?.requests) || 0, limit: limitOf(w?.requests_limit) },
    tokens: { used: num(w?.tokens) || 0, limit: limitOf(w?.tokens_limit) },
    cost: { used: num(w?.cost_usd) || 0, limit: limitOf(w?.cost_limit_usd) },
  };
}

function windowsFromState(windows: ProviderState["windows"]): Record<WindowName, WindowCells> {
  return Object.fromEntries(WINDOWS.map((w) => [w, cellsFromState(windows?.[w])])) as Record<WindowName, WindowCells>;
}

function applyScope(row: UsageRow, scope: ScopeUsage): void {
  for (const w of WINDOWS) {
    const t = scope.windows?.[w];
    const cells = row.windows[w];
    cells.requests.used = num(t?.requests) || 0;
    cells.tokens.used = (num(t?.tokens_in) || 0) + (num(t?.tokens_out) || 0);
    cells.cost.used = num(t?.cost_usd) || 0;
  }
}

function emptyRow(provider: string, model: string | null): UsageRow {
  return { provider, model, free: false, enabled: true, windows: windowsFromState(undefined) };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function setLimits(row: UsageRow, limits: unknown): void {
  if (!isObject(limits)) return;
  for (const w of WINDOWS) {
    row.windows[w].requests.limit = limitOf(limits[`requests_per_${w}`]);
    row.windows[w].tokens.limit = limitOf(limits[`tokens_per_${w}`]);
    row.windows[w].cost.limit = limitOf(limits[`cost_per_${w}`]);
  }
}

/**
 * The live usage event's ``limits`` (the config's: ``{provider: {limits: {...}, models: {model: {...}}}}``)
 * over the router's, which may be a few seconds older.
 */
export function applyLimits(blocks: ProviderBlock[], limits: unknown): void {
  if (!isObject(limits)) return;
  for (const b of blocks) {
    const entry = limits[b.provider];
    if (!isObject(entry)) continue;
    setLimits(b, entry.limits);
    if (!isObject(entry.models)) continue;
    for (const m of b.models) {
      const ml = m.model ? entry.models[m.model] : undefined;
      setLimits(m, isObject(ml) && isObject(ml.limits) ? ml.limits : ml);
    }
  }
}

/** Providers (configured ones in the router's order, then any seen only in usage), each with its models. */
export function buildOverview(providers: ProviderState[], scopes: ScopeUsage[] | null, limits?: unknown): ProviderBlock[] {
  const blocks: ProviderBlock[] = providers.map((p) => ({
    provider: p.id,
    model: null,
    free: Boolean(p.free_tier),
    enabled: p.enabled !== false,
    windows: windowsFromState(p.windows),
    health: p,
    models: (p.models ?? []).map((m) => ({
      provider: p.id,
      model: m.name,
      upstream: m.upstream,
      free: Boolean(p.free_tier),
      enabled: p.enabled !== false,
      windows: windowsFromState(m.windows),
    })),
  }));
  if (!scopes) {
    applyLimits(blocks, limits);
    return blocks;
  }
  const byId = new Map(blocks.map((b) => [b.provider, b]));
  const block = (id: string): ProviderBlock => {
    let b = byId.get(id);
    if (!b) {
      b = { ...emptyRow(id, null), health: null, models: [] };
      byId.set(id, b);
      blocks.push(b);
    }
    return b;
  };
  for (const scope of scopes) {
    if (scope.scope === "provider") applyScope(block(scope.provider), scope);
    else if (scope.scope === "model" && scope.model) {
      const b = block(scope.provider);
      let row = b.models.find((m) => m.model === scope.model);
      if (!row) {
        row = { ...emptyRow(scope.provider, scope.model), free: b.free };
        b.models.push(row);
      }
      applyScope(row, scope);
    }
  }
  applyLimits(blocks, limits);
  return blocks;
}

/** Sums over the providers: the top of the overview. */
export function totals(blocks: ProviderBlock[], window: WindowName): Record<Metric, number> {
  const out = { requests: 0, tokens: 0, cost: 0 };
  for (const b of blocks) for (const m of METRICS) out[m] += b.windows[window][m].used;
  return out;
}

/** A row with no limit in any window: its numbers go on one line, without bars. */
export function hasLimits(row: UsageRow): boolean {
  return WINDOWS.some((w) => METRICS.some((m) => row.windows[w][m].limit != null));
}

/** Sparkline spans in minutes: the last hour from per-minute buckets, 24 h and 7 d from coarser ones. */
export const SPANS = [1, 5, 10, 30, 60, 1440, 10080] as const;
export type Span = (typeof SPANS)[number];

export function spanLabel(span: Span): string {
  if (span === 10080) return "7 d";
  if (span === 1440) return "24 h";
  return `${span} min`;
}

/** The bucket of a span's sparkline, in seconds: minutes up to an hour, half hours for a day, 3 h for a week. */
export function spanBucketS(span: Span): number {
  if (span === 10080) return 3 * 3600;
  if (span === 1440) return 1800;
  return 60;
}

/** How many buckets a span's sparkline has. */
export function spanBuckets(span: Span): number {
  return Math.max(1, Math.round((span * 60) / spanBucketS(span)));
}

function metricOf(row: HistoryRow, metric: Metric): number {
  if (metric === "requests") return num(row.requests) || 0;
  if (metric === "tokens") return (num(row.tokens_in) || 0) + (num(row.tokens_out) || 0);
  return num(row.cost_usd) || 0;
}

/**
 * Values of the last ``buckets`` buckets of ``bucketS`` seconds (aligned to the epoch, as the history's are)
 * up to the one holding ``now``, oldest first, zeros where nothing happened, of one provider (model null) or
 * one of its models.
 */
export function bucketSeries(rows: HistoryRow[], provider: string, model: string | null, buckets: number,
                             bucketS: number, metric: Metric, now: number = Date.now()): number[] {
  const size = bucketS * 1000;
  const current = Math.floor(now / size);
  const out = new Array<number>(Math.max(1, buckets)).fill(0);
  for (const row of rows) {
    if (row.provider !== provider || (model !== null && row.model !== model)) continue;
    const bucket = Math.floor(new Date(row.bucket).getTime() / size);
    const index = out.length - 1 - (current - bucket);
    if (index >= 0 && index < out.length) out[index] += metricOf(row, metric);
  }
  return out;
}

/**
 * Per-minute values of the last ``minutes`` minutes up to the minute of ``now`` (oldest first, zeros
 * where nothing happened) of one provider (model null) or one of its models.
 */
export function minuteSeries(rows: HistoryRow[], provider: string, model: string | null, minutes: number,
                             metric: Metric, now: number = Date.now()): number[] {
  return bucketSeries(rows, provider, model, minutes, 60, metric, now);
}

/** A live window sampled over time (the 1-minute sparkline): samples within ``seconds`` of ``now``. */
export interface Sample {
  t: number; // ms
  v: number;
}

export function recentSamples(samples: Sample[], seconds: number, now: number = Date.now()): number[] {
  return samples.filter((s) => now - s.t <= seconds * 1000).map((s) => s.v);
}

/** SVG polyline points of ``values`` in a ``width`` x ``height`` box (a flat line at the bottom for all zeros). */
export function sparkPoints(values: number[], width: number, height: number, pad = 1.5): string {
  if (values.length === 0) return "";
  const max = Math.max(...values, 0);
  const step = values.length > 1 ? (width - 2 * pad) / (values.length - 1) : 0;
  return values
    .map((v, i) => {
      const x = values.length > 1 ? pad + i * step : width / 2;
      const y = max > 0 ? height - pad - (v / max) * (height - 2 * pad) : height - pad;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}
