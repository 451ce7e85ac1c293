import { describe, expect, it } from "vitest";
import type { PricingStatus } from "../src/lib/api/types";
import { pricingSummary, tableInUse } from "../src/lib/pricing";
import { formatDateTime } from "../src/lib/format";

const base: PricingStatus = {
  table: "bundled", table_as_of: "2026-11-02T09:00:00Z", table_origin: "litellm 1.2.3", table_size: 900,
  source_url: "https://example.org/prices.json", last_fetch_at: "2026-12-07T08:00:00Z", last_fetch_ok: false,
  last_fetch_error: "https://example.org/prices.json: ConnectError: [Errno -2] Name or service not known",
  bundled_as_of: "2026-11-02T09:00:00Z", bundled_origin: "litellm 1.2.3",
};

describe("the price table in words", () => {
  it("a failed fetch: which snapshot is in use and since when, not the fetch's error", () => {
    const s = pricingSummary(base);
    expect(s.warn).toBe(true);
    expect(s.text).toContain(`the bundled snapshot of ${formatDateTime(base.table_as_of).slice(0, 10)}`);
    expect(s.text).toContain("could not be fetched");
    expect(s.text).not.toMatch(/ConnectError|Errno|example\.org/);
  });
  it("a cached copy, to the minute it was fetched", () => {
    const cached = { ...base, table: "cache", table_as_of: "2026-12-01T10:02:33Z" } as PricingStatus;
    expect(tableInUse(cached)).toBe(`a cached copy fetched ${formatDateTime(cached.table_as_of).slice(0, 16)}`);
    expect(pricingSummary(cached).text).toMatch(/^The public price list could not be fetched \(last try .+\): using a cached copy/);
  });
  it("fetched: no warning", () => {
    const ok = { ...base, table: "remote", table_as_of: "2026-12-07T08:00:00Z", last_fetch_ok: true, last_fetch_error: null } as PricingStatus;
    expect(pricingSummary(ok)).toEqual({ text: `Prices from the public price list, fetched ${formatDateTime(ok.table_as_of).slice(0, 16)}.`, warn: false });
  });
});
