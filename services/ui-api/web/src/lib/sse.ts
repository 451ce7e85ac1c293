// Server-sent events: a parser of the text/event-stream format (for reading a stream with fetch where
// EventSource is missing) and the decoding of GET /api/live's `usage` and `health` events.

import type { LiveHealth, LiveUsage, ScopeUsage } from "./api/types";

export interface SseEvent {
  event: string; // "message" when the stream names none
  data: string;
  id: string | null;
}

/** Incremental: push() text as it arrives, get the events completed by it. */
export class SseParser {
  private buffer = "";
  private event = "";
  private data: string[] = [];
  private id: string | null = null;
  lastEventId: string | null = null;
  retryMs: number | null = null;

  push(chunk: string): SseEvent[] {
    this.buffer += chunk;
    const out: SseEvent[] = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      // a lone \r at the end may be the first half of \r\n: wait for more
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event) out.push(event);
    }
    return out;
  }

  private line(line: string): SseEvent | null {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "";
        return null;
      }
      const event = { event: this.event || "message", data: this.data.join("\n"), id: this.id };
      this.event = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return null; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
    return null;
  }
}

export type LiveMessage = { type: "usage"; data: LiveUsage } | { type: "health"; data: LiveHealth };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isScope(v: unknown): v is ScopeUsage {
  return isObject(v) && typeof v.provider === "string" && isObject(v.windows);
}

/** One /api/live event as the UI uses it; null for events it does not know or data that is not valid. */
export function decodeLive(event: string, data: string): LiveMessage | null {
  let body: unknown;
  try {
    body = JSON.parse(data);
  } catch {
    return null;
  }
  if (!isObject(body)) return null;
  if (event === "usage") {
    if (!Array.isArray(body.scopes)) return null;
    return {
      type: "usage",
      data: {
        at: typeof body.at === "string" ? body.at : new Date().toISOString(),
        scopes: body.scopes.filter(isScope),
        limits: body.limits,
        recent: Array.isArray(body.recent) ? body.recent.filter(isObject) : [],
      },
    };
  }
  if (event === "health") {
    const providers = Array.isArray(body.providers)
      ? body.providers
      : isObject(body.providers) // a map id -> state
        ? Object.entries(body.providers).map(([id, s]) => ({ id, ...(isObject(s) ? s : {}) }))
        : null;
    if (!providers) return null;
    const health: LiveHealth = { providers: providers.filter((p) => isObject(p) && typeof p.id === "string") };
    if ("pinned" in body) health.pinned = typeof body.pinned === "string" ? body.pinned : null;
    if (typeof body.smart === "boolean") health.smart = body.smart;
    if (typeof body.at === "string") health.at = body.at;
    return { type: "health", data: health };
  }
  return null;
}
