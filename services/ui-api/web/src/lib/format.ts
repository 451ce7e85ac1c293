// Numbers as the UI shows them: tokens and counts with thousands separators, USD with the precision
// its size needs, durations and times.

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const twoDecimals = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

export const DASH = "—";

/** A number from the API: numbers, decimal strings ("0.0042"), null. NaN when it is none. */
export function num(value: unknown): number {
  if (typeof value === "number") return value;
  if (typeof value === "string" && value.trim() !== "") return Number(value);
  return Number.NaN;
}

/** 1234567 -> "1,234,567" (rounded to an integer). */
export function formatInt(value: unknown): string {
  const n = num(value);
  return Number.isFinite(n) ? integer.format(Math.round(n)) : DASH;
}

export const formatTokens = formatInt;

/** 1234567 -> "1.2M", 12345 -> "12.3k", 999 -> "999": for tight spots (axes, tags). */
export function formatCompact(value: unknown): string {
  const n = num(value);
  if (!Number.isFinite(n)) return DASH;
  const abs = Math.abs(n);
  for (const [size, suffix] of [[1e9, "B"], [1e6, "M"], [1e3, "k"]] as const) {
    if (abs >= size) return `${(n / size).toFixed(abs >= size * 100 ? 0 : 1).replace(/\.0$/, "")}${suffix}`;
  }
  return integer.format(Math.round(n));
}

/**
 * USD with sensible precision: cents from $1 up ("$1,234.56"), three significant digits below
 * ("$0.0123", "$0.000042", at least two decimals: "$0.50"), "<$0.000001" for dust, "$0.00" for zero.
 */
export function formatUsd(value: unknown): string {
  const n = num(value);
  if (!Number.isFinite(n)) return DASH;
  const sign = n < 0 ? "-" : "";
  const abs = Math.abs(n);
  if (abs === 0) return "$0.00";
  if (abs >= 1) return `${sign}$${twoDecimals.format(abs)}`;
  const decimals = Math.min(6, Math.max(2, Math.ceil(-Math.log10(abs)) + 2));
  let text = abs.toFixed(decimals);
  if (Number(text) === 0) return `${sign === "-" ? ">-" : "<"}$0.000001`;
  text = text.replace(/0+$/, "");
  const [whole, fraction = ""] = text.split(".");
  return `${sign}$${whole}.${fraction.padEnd(2, "0")}`;
}

/** Milliseconds: "850 ms", "1.25 s", "12.5 s". */
export function formatMs(value: unknown): string {
  const n = num(value);
  if (!Number.isFinite(n)) return DASH;
  if (n < 1000) return `${integer.format(Math.round(n))} ms`;
  return `${(n / 1000).toFixed(n < 10_000 ? 2 : 1)} s`;
}

/** Seconds left: "45 s", "3 min 05 s", "2 h 10 min". */
export function formatDuration(seconds: unknown): string {
  const n = num(seconds);
  if (!Number.isFinite(n)) return DASH;
  const s = Math.max(0, Math.ceil(n));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** 0.734 -> "73%". */
export function formatPercent(ratio: number | null | undefined): string {
  if (ratio == null || !Number.isFinite(ratio)) return DASH;
  return `${Math.round(ratio * 100)}%`;
}

function pad(n: number): string {
  return String(n).padStart(2, "0");
}

/** An ISO time as local "YYYY-MM-DD HH:MM:SS" (sortable, unambiguous). */
export function formatDateTime(iso: string | null | undefined): string {
  if (!iso) return DASH;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return DASH;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** An ISO time as local "HH:MM:SS". */
export function formatTime(iso: string | null | undefined): string {
  const full = formatDateTime(iso);
  return full === DASH ? DASH : full.slice(11);
}

/** How long ago: "just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function formatAgo(iso: string | null | undefined, now: number = Date.now()): string {
  if (!iso) return DASH;
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return DASH;
  const s = Math.round((now - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
