// The config editor's pure parts: history entries as the API may send them, diff lines, problem lines.

import type { ConfigProblem, ConfigVersion } from "./api/types";
import { lineForPath } from "./yamlpath";

/** GET /api/config/history: {versions: [...] (kept previous versions, newest first), current} (a bare list too). */
export function historyEntries(reply: unknown): { current: ConfigVersion | null; versions: ConfigVersion[] } {
  const obj = typeof reply === "object" && reply !== null && !Array.isArray(reply) ? (reply as Record<string, unknown>) : {};
  const list = Array.isArray(reply) ? reply : (obj.versions ?? obj.history ?? obj.items ?? []);
  const isVersion = (v: unknown): v is ConfigVersion => typeof v === "object" && v !== null && "version" in v;
  return {
    current: isVersion(obj.current) ? obj.current : null,
    versions: (Array.isArray(list) ? list : []).filter(isVersion),
  };
}

export type DiffKind = "add" | "del" | "hunk" | "meta" | "same";

export function diffLines(diff: string): { kind: DiffKind; text: string }[] {
  if (!diff) return [];
  return diff.replace(/\n$/, "").split("\n").map((text) => {
    if (text.startsWith("+++") || text.startsWith("---")) return { kind: "meta" as const, text };
    if (text.startsWith("@@")) return { kind: "hunk" as const, text };
    if (text.startsWith("+")) return { kind: "add" as const, text };
    if (text.startsWith("-")) return { kind: "del" as const, text };
    return { kind: "same" as const, text };
  });
}

export interface PlacedProblem extends ConfigProblem {
  line: number | null;
}

/** Each problem with the line its path points at (a "line N" in the message wins). */
export function placeProblems(yaml: string, problems: ConfigProblem[]): PlacedProblem[] {
  return problems.map((p) => {
    const said = /\bline (\d+)/i.exec(p.message) ?? /\bline (\d+)/i.exec(p.path);
    const line = said ? Number(said[1]) : p.path ? lineForPath(yaml, p.path) : null;
    return { ...p, line };
  });
}

export interface ReplicaSummary {
  ok: boolean; // every process that answered runs the latest revision
  text: string;
  behind: string[]; // "edge edge-2: revision 11", one per process on an older revision
}

/** GET /api/config/replicas in words: which processes run the bucket's latest config revision. */
export function replicaSummary(reply: { latest: number; replicas: { service: string; instance: string; revision: number }[] }): ReplicaSummary {
  const total = reply.replicas.length;
  const behind = reply.replicas
    .filter((r) => r.revision !== reply.latest)
    .sort((a, b) => a.service.localeCompare(b.service) || a.instance.localeCompare(b.instance))
    .map((r) => `${r.service} ${r.instance}: revision ${r.revision}`);
  if (total === 0) return { ok: false, text: `No process answered (latest revision ${reply.latest}).`, behind };
  const plural = total === 1 ? "process runs" : "processes run";
  if (behind.length === 0) {
    return { ok: true, text: `All ${total} ${plural} revision ${reply.latest}, the latest.`, behind };
  }
  return { ok: false, text: `${total - behind.length} of ${total} ${plural} revision ${reply.latest}, the latest.`, behind };
}
