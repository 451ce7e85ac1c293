import { describe, expect, it } from "vitest";
import { formatAgo, formatCompact, formatDuration, formatInt, formatMs, formatPercent, formatTokens, formatUsd } from "../src/lib/format";

describe("tokens and counts", () => {
  it("have thousands separators", () => {
    expect(formatTokens(0)).toBe("0");
    expect(formatTokens(999)).toBe("999");
    expect(formatTokens(1234)).toBe("1,234");
    expect(formatTokens(1234567)).toBe("1,234,567");
    expect(formatInt("98765")).toBe("98,765");
    expect(formatInt(12.6)).toBe("13");
  });
  it("show a dash for nothing", () => {
    expect(formatTokens(null)).toBe("—");
    expect(formatTokens(undefined)).toBe("—");
    expect(formatTokens("x")).toBe("—");
  });
  it("compact for tight spots", () => {
    expect(formatCompact(950)).toBe("950");
    expect(formatCompact(12_345)).toBe("12.3k");
    expect(formatCompact(1_000_000)).toBe("1M");
    expect(formatCompact(250_000_000)).toBe("250M");
  });
});

describe("USD", () => {
  it("cents from a dollar up, with separators", () => {
    expect(formatUsd(1)).toBe("$1.00");
    expect(formatUsd("12.345")).toBe("$12.35");
    expect(formatUsd(1234.5)).toBe("$1,234.50");
  });
  it("three significant digits below a dollar, at least two decimals", () => {
    expect(formatUsd(0.5)).toBe("$0.50");
    expect(formatUsd(0.05)).toBe("$0.05");
    expect(formatUsd("0.0123")).toBe("$0.0123");
    expect(formatUsd(0.001234)).toBe("$0.00123");
    expect(formatUsd(0.000042)).toBe("$0.000042");
  });
  it("zero, dust and negatives", () => {
    expect(formatUsd(0)).toBe("$0.00");
    expect(formatUsd("0")).toBe("$0.00");
    expect(formatUsd(0.0000001)).toBe("<$0.000001");
    expect(formatUsd(-2.5)).toBe("-$2.50");
    expect(formatUsd(null)).toBe("—");
  });
});

describe("times", () => {
  it("milliseconds and seconds", () => {
    expect(formatMs(12.4)).toBe("12 ms");
    expect(formatMs(1250)).toBe("1.25 s");
    expect(formatMs(12_500)).toBe("12.5 s");
    expect(formatMs(null)).toBe("—");
  });
  it("durations", () => {
    expect(formatDuration(4.2)).toBe("5 s");
    expect(formatDuration(185)).toBe("3 min 05 s");
    expect(formatDuration(7800)).toBe("2 h 10 min");
  });
  it("ago", () => {
    const now = Date.parse("2025-01-01T12:00:00Z");
    expect(formatAgo("2025-01-01T11:59:58Z", now)).toBe("just now");
    expect(formatAgo("2025-01-01T11:59:00Z", now)).toBe("1 min ago");
    expect(formatAgo("2025-01-01T09:00:00Z", now)).toBe("3 h ago");
  });
  it("percent", () => {
    expect(formatPercent(0.734)).toBe("73%");
    expect(formatPercent(null)).toBe("—");
  });
});
