import { describe, expect, it } from "vitest";
import { lineForPath, parsePath } from "../src/lib/yamlpath";
import { diffLines, historyEntries, placeProblems } from "../src/lib/config";

const YAML = `version: 1
# providers
providers:
  - id: p1
    base_url: http://a
    models:
      - name: m1
      - name: m2
        limits:
          requests_per_minute: 5
  - id: p2
    models: [{name: x}]
routing:
  strategy: cheapest
`;

describe("field paths to lines", () => {
  it("parses dotted and bracketed paths", () => {
    expect(parsePath("providers.0.models[1].name")).toEqual(["providers", 0, "models", 1, "name"]);
    expect(parsePath("providers[1].id")).toEqual(["providers", 1, "id"]);
  });
  it("finds keys, sequence items and nested fields", () => {
    expect(lineForPath(YAML, "version")).toBe(1);
    expect(lineForPath(YAML, "providers")).toBe(3);
    expect(lineForPath(YAML, "providers.0")).toBe(4);
    expect(lineForPath(YAML, "providers.0.id")).toBe(4);
    expect(lineForPath(YAML, "providers.0.base_url")).toBe(5);
    expect(lineForPath(YAML, "providers.0.models.1.name")).toBe(8);
    expect(lineForPath(YAML, "providers.0.models.1.limits.requests_per_minute")).toBe(10);
    expect(lineForPath(YAML, "providers.1.id")).toBe(11);
    expect(lineForPath(YAML, "routing.strategy")).toBe(14);
  });
  it("stops at the deepest part it finds", () => {
    expect(lineForPath(YAML, "providers.1.models.0.name")).toBe(12); // a flow sequence
    expect(lineForPath(YAML, "routing.nope")).toBe(13);
    expect(lineForPath(YAML, "nothing.here")).toBeNull();
  });
  it("a sequence at its key's indentation", () => {
    expect(lineForPath("providers:\n- id: a\n- id: b\n  models: []\n", "providers.1.models")).toBe(4);
  });
});

describe("the config editor's helpers", () => {
  it("places problems, a line in the message first", () => {
    const placed = placeProblems(YAML, [
      { path: "providers.0.models.1.name", message: "duplicate" },
      { path: "", message: "YAML error at line 7, column 3" },
    ]);
    expect(placed.map((p) => p.line)).toEqual([8, 7]);
  });
  it("colours diff lines", () => {
    expect(diffLines("--- a\n+++ b\n@@ -1 +1 @@\n-old\n+new\n same\n").map((d) => d.kind))
      .toEqual(["meta", "meta", "hunk", "del", "add", "same"]);
    expect(diffLines("")).toEqual([]);
  });
  it("reads the history: kept versions newest first, and the current file", () => {
    const h = historyEntries({ versions: [{ version: "20250102T000000.000000Z-bbbbbbbb" }, { version: "20250101T000000.000000Z-aaaaaaaa" }],
                               current: { version: "20250103T000000.000000Z-cccccccc", etag: "c" } });
    expect(h.versions.map((v) => v.version)).toEqual(["20250102T000000.000000Z-bbbbbbbb", "20250101T000000.000000Z-aaaaaaaa"]);
    expect(h.current?.etag).toBe("c");
    expect(historyEntries([{ version: 5, at: "x" }, { nope: 1 }]).versions).toHaveLength(1);
    expect(historyEntries(null)).toEqual({ current: null, versions: [] });
  });
});
