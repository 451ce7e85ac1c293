// The admin API client: typed by the OpenAPI snapshot (schema.d.ts), same-origin with the login cookie,
// the CSRF header on every state-changing call, one error type for every refusal.

import type { paths } from "./schema";
import type { ConfigProblem } from "./types";

export const CSRF_HEADER = "x-llmgw-csrf";

/** A refusal in the admin API's shape ({"error": {"message", "type", "code"}}), or no answer at all. */
export class ApiError extends Error {
  readonly status: number; // 0: no answer (network)
  readonly type: string;
  readonly code: string;
  readonly problems: ConfigProblem[];
  readonly body: unknown;

  constructor(status: number, message: string, code = "error", type = "api_error", problems: ConfigProblem[] = [],
              body: unknown = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.type = type;
    this.problems = problems;
    this.body = body;
  }
}

function problemsOf(body: Record<string, unknown>): ConfigProblem[] {
  const inner = body.error as Record<string, unknown> | undefined;
  const list = Array.isArray(body.problems) ? body.problems : Array.isArray(inner?.problems) ? inner?.problems : [];
  return (list as unknown[])
    .filter((p): p is Record<string, unknown> => typeof p === "object" && p !== null)
    .map((p) => ({ path: String(p.path ?? ""), message: String(p.message ?? p.msg ?? "invalid") }));
}

/** The ApiError a non-2xx answer stands for. */
export async function errorFrom(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => "");
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (typeof body === "object" && body !== null && "error" in body) {
    const b = body as Record<string, unknown>;
    const err = b.error;
    if (typeof err === "object" && err !== null) {
      const e = err as Record<string, unknown>;
      return new ApiError(response.status, String(e.message ?? response.statusText), String(e.code ?? "error"),
                          String(e.type ?? "api_error"), problemsOf(b), body);
    }
    if (typeof err === "string") return new ApiError(response.status, err, "error", "api_error", problemsOf(b), body);
  }
  const message = text.trim().slice(0, 300) || response.statusText || `HTTP ${response.status}`;
  return new ApiError(response.status, message, "http_" + response.status, "api_error", [], body);
}

export type Query = Record<string, string | number | boolean | null | undefined>;

export interface Options {
  query?: Query;
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  params?: Record<string, string>; // {name} in the path
}

export function buildUrl(path: string, query?: Query, params?: Record<string, string>): string {
  let url = path.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = params?.[name];
    if (value == null) throw new Error(`missing path parameter ${name}`);
    return encodeURIComponent(value);
  });
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v === null || v === undefined || v === "") continue;
    search.set(k, String(v));
  }
  const qs = search.toString();
  if (qs) url += "?" + qs;
  return url;
}

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

/** Called on a 401 from any call but the login and the session check: the UI shows its login. */
let onUnauthorized: ((error: ApiError) => void) | null = null;
export function setUnauthorizedHandler(handler: ((error: ApiError) => void) | null): void {
  onUnauthorized = handler;
}

export async function request<T>(method: string, path: string, options: Options = {},
                                 fetcher: typeof fetch = (...a) => fetch(...a)): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json", ...(options.headers ?? {}) };
  const upper = method.toUpperCase();
  if (!SAFE.has(upper)) headers[CSRF_HEADER] = "1";
  let body: string | undefined;
  if (options.body !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  let response: Response;
  try {
    response = await fetcher(buildUrl(path, options.query, options.params), {
      method: upper, headers, body, credentials: "same-origin", signal: options.signal,
    });
  } catch (e) {
    if (e instanceof DOMException && e.name === "AbortError") throw e;
    throw new ApiError(0, "cannot reach the admin API: " + (e instanceof Error ? e.message : String(e)), "network");
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (error.status === 401 && path !== "/api/login" && path !== "/api/session") onUnauthorized?.(error);
    throw error;
  }
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  if (!text) return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ApiError(response.status, "the admin API answered something that is not JSON", "not_json");
  }
}

// ---- typed by the OpenAPI snapshot -----------------------------------------------------------------

type JsonOf<R> = R extends { content: { "application/json": infer B } } ? B : unknown;
type Success<Op> = Op extends { responses: infer R }
  ? 200 extends keyof R ? JsonOf<R[200]> : 201 extends keyof R ? JsonOf<R[201]> : unknown
  : unknown;
type BodyOf<Op> = Op extends { requestBody?: { content: { "application/json": infer B } } } ? B : unknown;

type PathsWith<M extends string> = { [P in keyof paths]: paths[P] extends Record<M, infer Op> ? (Op extends undefined | never ? never : P) : never }[keyof paths];

export type GetResult<P extends PathsWith<"get">> = Success<NonNullable<paths[P]["get"]>>;
export type PostResult<P extends PathsWith<"post">> = Success<NonNullable<paths[P]["post"]>>;
export type PostBody<P extends PathsWith<"post">> = BodyOf<NonNullable<paths[P]["post"]>>;

export const api = {
  get<P extends PathsWith<"get">>(path: P, options: Omit<Options, "body"> = {}): Promise<GetResult<P>> {
    return request<GetResult<P>>("GET", path as string, options);
  },
  post<P extends PathsWith<"post">>(path: P, body?: PostBody<P>, options: Omit<Options, "body"> = {}): Promise<PostResult<P>> {
    return request<PostResult<P>>("POST", path as string, { ...options, body: body ?? {} });
  },
  /** A route the snapshot does not describe (yet): the caller names the answer's type. */
  call<T>(method: string, path: string, options: Options = {}): Promise<T> {
    return request<T>(method, path, options);
  },
};
