// A key's spend through its calendar month: a bar per day, the month-to-date line and the monthly budget,
// on one scale, as SVG geometry.

import type { DayTotals } from "./api/types";
import { num } from "./format";

/** The calendar day ("YYYY-MM-DD") of an instant in a time zone (the keys' budget_timezone). */
export function dayIn(at: Date | string, timeZone: string): string {
  const date = typeof at === "string" ? new Date(at) : at;
  try {
    return new Intl.DateTimeFormat("en-CA", { timeZone, year: "numeric", month: "2-digit", day: "2-digit" }).format(date);
  } catch {
    return date.toISOString().slice(0, 10); // an unknown zone: UTC
  }
}

export interface SpendBar {
  day: string;
  cost: number;
  toDate: number; // the month's spend up to and with this day
  future: boolean;
  x: number;
  y: number;
  w: number;
  h: number;
}

export interface SpendChart {
  bars: SpendBar[];
  line: string; // polyline points of the month-to-date spend, up to today
  budgetY: number | null; // null: no monthly budget
  total: number;
  budget: number | null;
  ratio: number | null; // total / budget
}

export function spendChart(days: readonly DayTotals[], budget: unknown, today: string, width: number,
                           height: number, pad = 2): SpendChart {
  const limit = budget == null || !Number.isFinite(num(budget)) ? null : num(budget);
  let toDate = 0;
  const values = days.map((d) => {
    const future = d.day > today;
    const cost = future ? 0 : Math.max(0, num(d.cost_usd) || 0);
    toDate += cost;
    return { day: d.day, cost, toDate, future };
  });
  const total = toDate;
  const max = Math.max(total, limit ?? 0, ...values.map((v) => v.cost)) || 1;
  const slot = days.length ? (width - 2 * pad) / days.length : 0;
  const y = (v: number) => height - pad - (v / max) * (height - 2 * pad);
  const bars = values.map((v, i) => {
    const top = y(v.cost);
    return { ...v, x: pad + i * slot + slot * 0.15, y: top, w: slot * 0.7, h: height - pad - top };
  });
  const line = values.filter((v) => !v.future)
    .map((v, i) => `${(pad + i * slot + slot / 2).toFixed(1)},${y(v.toDate).toFixed(1)}`).join(" ");
  return {
    bars, line, total, budget: limit,
    budgetY: limit == null ? null : y(limit),
    ratio: limit == null ? null : limit > 0 ? total / limit : total > 0 ? 1 : 0,
  };
}
