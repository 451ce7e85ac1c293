import { afterEach, describe, expect, it, vi } from "vitest";
import { ApiError, api, buildUrl, CSRF_HEADER, errorFrom, request, setUnauthorizedHandler } from "../src/lib/api/client";

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

afterEach(() => {
  vi.unstubAllGlobals();
  setUnauthorizedHandler(null);
});

describe("the API client", () => {
  it("sends the CSRF header on state-changing calls only, with the cookie (same origin)", async () => {
    const fetcher = vi.fn(async () => json(200, { ok: true }));
    vi.stubGlobal("fetch", fetcher);
    await api.get("/api/keys");
    await api.post("/api/router/pin", { provider: "p1" });
    await api.call("PUT", "/api/config", { body: { yaml: "x" }, headers: { "if-match": "abc" } });
    const calls = fetcher.mock.calls as unknown as [string, RequestInit][];
    const [getUrl, getInit] = calls[0];
    expect(getUrl).toBe("/api/keys");
    expect(getInit.credentials).toBe("same-origin");
    expect((getInit.headers as Record<string, string>)[CSRF_HEADER]).toBeUndefined();
    const [, postInit] = calls[1];
    expect(postInit.method).toBe("POST");
    expect((postInit.headers as Record<string, string>)[CSRF_HEADER]).toBe("1");
    expect(postInit.body).toBe('{"provider":"p1"}');
    const [, putInit] = calls[2];
    expect((putInit.headers as Record<string, string>)["if-match"]).toBe("abc");
    expect((putInit.headers as Record<string, string>)[CSRF_HEADER]).toBe("1");
  });

  it("builds query strings and fills path parameters", () => {
    expect(buildUrl("/api/requests", { model: "a b", limit: 50, cursor: undefined, key_id: "", status: null }))
      .toBe("/api/requests?model=a+b&limit=50");
    expect(buildUrl("/api/keys/{key_id}/usage", undefined, { key_id: "ab/c" })).toBe("/api/keys/ab%2Fc/usage");
    expect(() => buildUrl("/api/keys/{key_id}")).toThrow(/key_id/);
  });

  it("turns the error shape into an ApiError", async () => {
    const fetcher = vi.fn(async () => json(403, { error: { message: "the read-only credential may not change anything", type: "invalid_request_error", code: "read_only" } }));
    const err = (await request("POST", "/api/keys", { body: {} }, fetcher as unknown as typeof fetch).catch((e: unknown) => e)) as ApiError;
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(403);
    expect(err.code).toBe("read_only");
    expect(err.type).toBe("invalid_request_error");
    expect(err.message).toMatch(/read-only/);
  });

  it("keeps a config save's problems (400 with error and problems)", async () => {
    const e = await errorFrom(json(400, {
      error: { message: "invalid config", type: "invalid_request_error", code: "invalid_config" },
      problems: [{ path: "providers.0.id", message: "bad id" }],
    }));
    expect(e.problems).toEqual([{ path: "providers.0.id", message: "bad id" }]);
    expect(e.code).toBe("invalid_config");
  });

  it("copes with bodies that are not the shape", async () => {
    const plain = await errorFrom(new Response("Bad Gateway", { status: 502, statusText: "Bad Gateway" }));
    expect(plain.status).toBe(502);
    expect(plain.message).toBe("Bad Gateway");
    const empty = await errorFrom(new Response("", { status: 500, statusText: "Internal Server Error" }));
    expect(empty.message).toBe("Internal Server Error");
  });

  it("reports a network failure as status 0", async () => {
    const fetcher = vi.fn(async () => {
      throw new TypeError("Failed to fetch");
    });
    const err = (await request("GET", "/api/keys", {}, fetcher as unknown as typeof fetch).catch((e: unknown) => e)) as ApiError;
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(0);
    expect(err.message).toMatch(/cannot reach/);
  });

  it("a 401 asks for the login, except from the login itself", async () => {
    const seen: ApiError[] = [];
    setUnauthorizedHandler((e) => seen.push(e));
    const fetcher = vi.fn(async () => json(401, { error: { message: "session expired", type: "invalid_request_error", code: "unauthorized" } }));
    await request("GET", "/api/keys", {}, fetcher as unknown as typeof fetch).catch(() => undefined);
    await request("POST", "/api/login", { body: { token: "x" } }, fetcher as unknown as typeof fetch).catch(() => undefined);
    expect(seen).toHaveLength(1);
    expect(seen[0].code).toBe("unauthorized");
  });

  it("a 409 is an ApiError the editor can tell apart", async () => {
    const fetcher = vi.fn(async () => json(409, { error: { message: "the config changed", type: "invalid_request_error", code: "conflict" } }));
    const err = (await request("PUT", "/api/config", { body: { yaml: "" } }, fetcher as unknown as typeof fetch).catch((e: unknown) => e)) as ApiError;
    expect(err.status).toBe(409);
  });
});
