// The config editor's pure parts: history entries as the API may send them, diff lines, problem lines.

import type { ConfigProblem, ConfigVersion } from "./api/types";
import { lineForPath } from "./yamlpath";

/** GET /api/config/history: a list, or {versions | history | items: [...]}; newest first. */
export function historyEntries(reply: unknown): ConfigVersion[] {
  const list = Array.isArray(reply)
    ? reply
    : typeof reply === "object" && reply !== null
      ? ((reply as Record<string, unknown>).versions ?? (reply as Record<string, unknown>).history ??
         (reply as Record<string, unknown>).items ?? [])
      : [];
  return (Array.isArray(list) ? list : [])
    .filter((v): v is ConfigVersion => typeof v === "object" && v !== null && "version" in v)
    .sort((a, b) => (Number(b.version) || 0) - (Number(a.version) || 0));
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
