// Which price table the gateway uses, in words: when the public price list could not be fetched, the
// page says which copy is in use and from when, not the fetch's error.

import type { PricingStatus } from "./api/types";
import { formatDateTime } from "./format";

/** "2026-11-02" (local date) of an ISO time; "" when there is none. */
function day(iso: string | null | undefined): string {
  return formatDateTime(iso).slice(0, 10).replace("—", "");
}

/** "2026-12-01 10:02" (local, to the minute); "" when there is none. */
function minute(iso: string | null | undefined): string {
  return formatDateTime(iso).slice(0, 16).replace("—", "");
}

/** The table in use, e.g. "the bundled snapshot of 2026-11-02" or "a cached copy fetched 2026-12-01 10:02". */
export function tableInUse(status: PricingStatus): string {
  if (status.table === "remote") {
    const when = minute(status.table_as_of);
    return `the public price list, fetched ${when || "at start-up"}`;
  }
  if (status.table === "cache") {
    const when = minute(status.table_as_of);
    return when ? `a cached copy fetched ${when}` : "a cached copy of an earlier fetch";
  }
  const when = day(status.table_as_of ?? status.bundled_as_of);
  return when ? `the bundled snapshot of ${when}` : "the bundled snapshot";
}

/** One sentence on the price table: what is in use and, when the last fetch failed, that it did (and when). */
export function pricingSummary(status: PricingStatus): { text: string; warn: boolean } {
  const using = tableInUse(status);
  if (status.last_fetch_ok === false) {
    const tried = minute(status.last_fetch_at);
    return {
      text: `The public price list could not be fetched${tried ? ` (last try ${tried})` : ""}: using ${using}.`,
      warn: true,
    };
  }
  return { text: `Prices from ${using}.`, warn: false };
}
