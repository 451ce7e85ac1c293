import { describe, expect, it } from "vitest";
import type { DayTotals, KeyView } from "../src/lib/api/types";
import { keyName, keyPrefix } from "../src/lib/keys";
import { dayIn, spendChart } from "../src/lib/spend";

describe("keys as the pages show them", () => {
  it("one ellipsis after a secret's prefix", () => {
    expect(keyPrefix("llmgw-ab12cd34ef56ab78…")).toBe("llmgw-ab12cd34ef56ab78…");
    expect(keyPrefix("llmgw-ab12")).toBe("llmgw-ab12…");
    expect(keyPrefix("llmgw-ab12...")).toBe("llmgw-ab12…");
    expect(keyPrefix("")).toBe("");
  });
  it("the request log names keys by their name, the id only when the key is unknown", () => {
    const keys = [{ id: "0123456789ab", name: "team-a" }, { id: "ba9876543210", name: "ci" }] as KeyView[];
    expect(keyName(keys, "ba9876543210")).toBe("ci");
    expect(keyName(keys, "ffffffffffff")).toBe("ffffffffffff");
    expect(keyName(keys, "")).toBe("—");
  });
});

describe("a key's month, day by day, against its budget", () => {
  const days = (costs: string[]): DayTotals[] =>
    costs.map((c, i) => ({ day: `2026-12-${String(i + 1).padStart(2, "0")}`, requests: 1, tokens_in: 0, tokens_out: 0, cost_usd: c }));
  it("bars per day, the month-to-date line up to today, the budget line on the same scale", () => {
    const chart = spendChart(days(["1", "0", "3", "0", "0"]), "10", "2026-12-03", 100, 50, 0);
    expect(chart.total).toBe(4);
    expect(chart.ratio).toBeCloseTo(0.4);
    expect(chart.budgetY).toBe(0); // the budget is the top of the scale
    expect(chart.bars.map((b) => b.toDate)).toEqual([1, 1, 4, 4, 4]);
    expect(chart.bars.map((b) => b.future)).toEqual([false, false, false, true, true]);
    expect(chart.bars[2].h).toBeCloseTo(15); // $3 of $10 in 50 px
    expect(chart.line.split(" ").length).toBe(3); // no line into the future
  });
  it("spend over the budget sets the scale; no budget: no line", () => {
    const over = spendChart(days(["8", "4"]), "10", "2026-12-31", 100, 60, 0);
    expect(over.ratio).toBeCloseTo(1.2);
    expect(over.budgetY).toBeCloseTo(10); // 10 of 12 from the bottom of 60 px
    const none = spendChart(days(["1"]), null, "2026-12-31", 100, 60);
    expect(none.budgetY).toBeNull();
    expect(none.ratio).toBeNull();
  });
  it("today in the keys' budget time zone", () => {
    expect(dayIn("2026-11-30T19:00:00Z", "Asia/Kolkata")).toBe("2026-12-01");
    expect(dayIn("2026-11-30T19:00:00Z", "UTC")).toBe("2026-11-30");
    expect(dayIn("2026-11-30T19:00:00Z", "Not/AZone")).toBe("2026-11-30");
  });
});
