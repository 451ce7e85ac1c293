import { describe, expect, it } from "vitest";
import { barLevel, barWidth, usageRatio } from "../src/lib/bars";

describe("bar colours", () => {
  it("green below 70 %, amber below 90 %, red from 90 %", () => {
    expect(barLevel(0)).toBe("ok");
    expect(barLevel(0.699)).toBe("ok");
    expect(barLevel(0.7)).toBe("warn");
    expect(barLevel(0.899)).toBe("warn");
    expect(barLevel(0.9)).toBe("over");
    expect(barLevel(1.5)).toBe("over");
    expect(barLevel(null)).toBe("none");
  });
  it("the ratio of used to limit", () => {
    expect(usageRatio(7, 10)).toBeCloseTo(0.7);
    expect(usageRatio("0.45", "0.5")).toBeCloseTo(0.9); // decimal strings (cost)
    expect(usageRatio(5, null)).toBeNull(); // no limit
    expect(usageRatio(5, undefined)).toBeNull();
    expect(usageRatio(0, 0)).toBe(1); // a zero limit is full
    expect(usageRatio(-3, 10)).toBe(0);
  });
  it("the width is clamped", () => {
    expect(barWidth(0.5)).toBe(50);
    expect(barWidth(3)).toBe(100);
    expect(barWidth(null)).toBe(0);
  });
  it("levels from real numbers", () => {
    expect(barLevel(usageRatio(60, 100))).toBe("ok");
    expect(barLevel(usageRatio(85, 100))).toBe("warn");
    expect(barLevel(usageRatio(95, 100))).toBe("over");
  });
});
