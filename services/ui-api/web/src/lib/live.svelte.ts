// Live usage and health for the overview and providers pages: GET /api/live (server-sent events, the
// login cookie goes with it) while it answers; polling /api/usage/current and /api/router/state every
// 2 s when it does not. The router's state (limits, pin, smart) is re-read every 10 s either way.

import { ApiError, api } from "./api/client";
import type { LiveHealth, LiveUsage, RouterState } from "./api/types";
import { decodeLive, SseParser } from "./sse";
import type { Sample } from "./usage";

const POLL_MS = 2000;
const ROUTER_MS = 10_000;
const FIRST_EVENT_MS = 5000; // no usage event by then: poll meanwhile
const RECONNECT_MS = 15_000;
const SAMPLE_KEEP_MS = 70_000;

class Live {
  usage = $state.raw<LiveUsage | null>(null);
  router = $state.raw<RouterState | null>(null);
  mode = $state<"connecting" | "live" | "polling">("connecting");
  updatedAt = $state(0);
  samplesVersion = $state(0);
  error = $state<string | null>(null);
}

export const live = new Live();
const samples = new Map<string, Sample[]>();

export function sampleKey(provider: string, model: string | null): string {
  return `${provider}\u0000${model ?? ""}`;
}

export function samplesFor(provider: string, model: string | null): Sample[] {
  return samples.get(sampleKey(provider, model)) ?? [];
}

let users = 0;
let source: EventSource | null = null;
let streamAbort: AbortController | null = null;
let pollTimer: ReturnType<typeof setInterval> | null = null;
let routerTimer: ReturnType<typeof setInterval> | null = null;
let watchdog: ReturnType<typeof setTimeout> | null = null;
let reconnect: ReturnType<typeof setTimeout> | null = null;
let streamed = false; // a usage event came over the stream since it (re)opened

function onUsage(data: LiveUsage, viaStream: boolean): void {
  live.usage = data;
  live.updatedAt = Date.now();
  live.error = null;
  if (viaStream) {
    streamed = true;
    live.mode = "live";
    stopPolling();
  }
  const t = Date.parse(data.at) || Date.now();
  for (const scope of data.scopes) {
    if (scope.scope === "key") continue;
    const key = sampleKey(scope.provider, scope.scope === "model" ? (scope.model ?? null) : null);
    const list = samples.get(key) ?? [];
    const last = list[list.length - 1];
    const v = Number(scope.windows?.minute?.requests ?? 0);
    if (last && last.t === t) last.v = v;
    else list.push({ t, v });
    while (list.length && t - list[0].t > SAMPLE_KEEP_MS) list.shift();
    samples.set(key, list);
  }
  live.samplesVersion++;
}

function onHealth(health: LiveHealth): void {
  const current = live.router;
  if (!current) {
    live.router = { pinned: health.pinned ?? null, smart: health.smart ?? false, providers: health.providers };
    return;
  }
  const byId = new Map(health.providers.map((p) => [p.id, p]));
  live.router = {
    pinned: health.pinned !== undefined ? health.pinned : current.pinned,
    smart: health.smart !== undefined ? health.smart : current.smart,
    providers: current.providers.map((p) => {
      const h = byId.get(p.id);
      // health carries no limits: keep the windows (and models) the router's state gave
      return h ? { ...p, ...h, windows: h.windows ?? p.windows, models: h.models ?? p.models } : p;
    }),
  };
}

function dispatch(event: string, data: string, viaStream: boolean): void {
  const message = decodeLive(event, data);
  if (message?.type === "usage") onUsage(message.data, viaStream);
  else if (message?.type === "health") onHealth(message.data);
}

export async function refreshRouter(): Promise<void> {
  try {
    live.router = (await api.get("/api/router/state")) as unknown as RouterState;
  } catch (e) {
    live.error = e instanceof Error ? e.message : String(e);
  }
}

async function poll(): Promise<void> {
  try {
    const [current] = await Promise.all([api.get("/api/usage/current"), refreshRouter()]);
    onUsage({ at: current.at ?? new Date().toISOString(), scopes: current.scopes ?? [], recent: undefined }, false);
  } catch (e) {
    live.error = e instanceof Error ? e.message : String(e);
  }
}

function startPolling(): void {
  if (!streamed) live.mode = "polling";
  if (pollTimer) return;
  void poll();
  pollTimer = setInterval(() => void poll(), POLL_MS);
}

function stopPolling(): void {
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
}

/** Where EventSource is missing: the same stream read with fetch. */
async function readStream(): Promise<void> {
  streamAbort = new AbortController();
  const response = await fetch("/api/live", { credentials: "same-origin", signal: streamAbort.signal,
                                              headers: { accept: "text/event-stream" } });
  if (!response.ok || !response.body) throw new ApiError(response.status, "no live stream");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const ev of parser.push(value)) dispatch(ev.event, ev.data, true);
  }
}

function connect(): void {
  streamed = false;
  live.mode = "connecting";
  if (watchdog) clearTimeout(watchdog);
  watchdog = setTimeout(() => {
    if (!streamed) startPolling();
  }, FIRST_EVENT_MS);
  if (typeof EventSource === "undefined") {
    readStream().catch(() => undefined).finally(() => {
      if (users > 0) {
        startPolling();
        reconnect = setTimeout(connect, RECONNECT_MS);
      }
    });
    return;
  }
  const es = new EventSource("/api/live");
  source = es;
  es.addEventListener("usage", (e) => dispatch("usage", (e as MessageEvent).data, true));
  es.addEventListener("health", (e) => dispatch("health", (e as MessageEvent).data, true));
  es.onerror = () => {
    if (es.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
    es.close();
    source = null;
    streamed = false;
    startPolling();
    if (users > 0) reconnect = setTimeout(connect, RECONNECT_MS);
  };
}

function open(): void {
  void refreshRouter();
  routerTimer = setInterval(() => void refreshRouter(), ROUTER_MS);
  connect();
}

function close(): void {
  source?.close();
  source = null;
  streamAbort?.abort();
  streamAbort = null;
  stopPolling();
  for (const t of [watchdog, reconnect]) if (t) clearTimeout(t);
  if (routerTimer) clearInterval(routerTimer);
  watchdog = reconnect = routerTimer = null;
}

/** Live updates while the caller needs them: call the returned function to stop. */
export function startLive(): () => void {
  users++;
  if (users === 1) open();
  return () => {
    users--;
    if (users === 0) close();
  };
}

/** POST /api/router/pin or /smart answered: show it at once, then re-read the router's state. */
export function routerChanged(change: Partial<RouterState>): void {
  if (live.router) live.router = { ...live.router, ...change };
  void refreshRouter();
}

