import { describe, expect, it } from "vitest";
import { replicaSummary } from "../src/lib/config";

describe("replicaSummary", () => {
  it("says when every process runs the latest revision", () => {
    const s = replicaSummary({ latest: 7, replicas: [
      { service: "edge", instance: "edge-1", revision: 7 }, { service: "router", instance: "r1", revision: 7 }] });
    expect(s).toEqual({ ok: true, text: "All 2 processes run revision 7, the latest.", behind: [] });
  });

  it("names the processes still on an older revision", () => {
    const s = replicaSummary({ latest: 8, replicas: [
      { service: "router", instance: "r1", revision: 8 }, { service: "edge", instance: "edge-2", revision: 7 },
      { service: "edge", instance: "edge-1", revision: 8 }] });
    expect(s.ok).toBe(false);
    expect(s.text).toBe("2 of 3 processes run revision 8, the latest.");
    expect(s.behind).toEqual(["edge edge-2: revision 7"]);
  });

  it("is not ok when nobody answered", () => {
    expect(replicaSummary({ latest: 3, replicas: [] })).toMatchObject({ ok: false, text: "No process answered (latest revision 3)." });
  });
});
