// Usage against a limit: how full, and in which colour (green below 70 %, amber below 90 %, red from 90 %).

import { num } from "./format";

export type Level = "ok" | "warn" | "over" | "none";

export const WARN_AT = 0.7;
export const OVER_AT = 0.9;

/** used / limit; null when there is no limit. A limit of 0 is full as soon as it exists. */
export function usageRatio(used: unknown, limit: unknown): number | null {
  const l = num(limit);
  if (limit == null || !Number.isFinite(l)) return null;
  const u = Math.max(0, num(used) || 0);
  if (l <= 0) return 1;
  return u / l;
}

export function barLevel(ratio: number | null): Level {
  if (ratio == null) return "none";
  if (ratio < WARN_AT) return "ok";
  if (ratio < OVER_AT) return "warn";
  return "over";
}

/** The bar's filled width in percent, 0..100 (a ratio over 1 is a full bar). */
export function barWidth(ratio: number | null): number {
  if (ratio == null || !Number.isFinite(ratio)) return 0;
  return Math.min(100, Math.max(0, ratio * 100));
}

export const LEVEL_LABEL: Record<Level, string> = {
  ok: "under 70% of the limit",
  warn: "70–90% of the limit",
  over: "90% of the limit or more",
  none: "no limit",
};
