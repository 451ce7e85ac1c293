// Where a config problem is: the 1-based line of a field path ("providers.0.models.1.name",
// "providers[0].models[1].name" or ["providers", 0, ...]) in block-style YAML. Best effort: the deepest
// part of the path found (a flow collection such as `models: [{name: m}]` stops at its key's line).

export type PathPart = string | number;

export function parsePath(path: string | PathPart[]): PathPart[] {
  if (Array.isArray(path)) return path;
  const parts: PathPart[] = [];
  for (const raw of path.replace(/\[(\d+)\]/g, ".$1").split(".")) {
    const part = raw.trim();
    if (part === "") continue;
    parts.push(/^\d+$/.test(part) ? Number(part) : part.replace(/^["']|["']$/g, ""));
  }
  return parts;
}

interface Line {
  indent: number; // leading spaces
  dash: boolean; // a sequence item ("- ...")
  keyIndent: number; // where the key (if any) starts: after "- " on a dash line
  key: string | null;
}

function scan(text: string): Line | null {
  const m = /^( *)(- +)?(.*)$/.exec(text);
  if (!m) return null;
  const rest = m[3];
  if (rest.trim() === "" && !m[2]) return null;
  if (rest.trimStart().startsWith("#")) return m[2] ? { indent: m[1].length, dash: true, keyIndent: m[1].length + m[2].length, key: null } : null;
  const key = /^("[^"]*"|'[^']*'|[^\s#'"][^:#]*?)\s*:(\s|$)/.exec(rest);
  return {
    indent: m[1].length,
    dash: Boolean(m[2]),
    keyIndent: m[1].length + (m[2]?.length ?? 0),
    key: key ? key[1].replace(/^["']|["']$/g, "") : null,
  };
}

/** The 1-based line of ``path`` in ``yaml``; null when not even its first part is there. */
export function lineForPath(yaml: string, path: string | PathPart[]): number | null {
  const lines = yaml.split(/\r\n|\r|\n/).map(scan);
  const parts = parsePath(path);
  let start = 0;
  let end = lines.length;
  let found: number | null = null;
  for (const part of parts) {
    const first = lines.slice(start, end).findIndex((l) => l !== null);
    if (first === -1) break;
    const level = lines[start + first]!;
    let hit = -1;
    let itemIndent = -1;
    if (typeof part === "number") {
      itemIndent = level.indent;
      let n = -1;
      for (let i = start; i < end; i++) {
        const l = lines[i];
        if (l && l.dash && l.indent === itemIndent && ++n === part) {
          hit = i;
          break;
        }
      }
    } else {
      const keyLevel = level.keyIndent;
      for (let i = start; i < end; i++) {
        const l = lines[i];
        if (l && l.key === part && l.keyIndent === keyLevel) {
          hit = i;
          break;
        }
      }
    }
    if (hit === -1) break;
    found = hit + 1;
    const here = lines[hit]!;
    // the part's value: the lines after it that are deeper (a key's block sequence may sit at the key's indent)
    const bound = typeof part === "number" ? itemIndent : here.keyIndent;
    let stop = hit + 1;
    for (; stop < end; stop++) {
      const l = lines[stop];
      if (!l) continue;
      if (l.indent > bound) continue;
      if (typeof part !== "number" && l.dash && l.indent === bound) continue;
      break;
    }
    // a sequence item's first key is on its own dash line
    start = typeof part === "number" ? hit : hit + 1;
    end = stop;
    if (typeof part === "number") {
      // look at the item's content only: the dash line counts by its key
      const item = lines[hit]!;
      if (item.key === null) start = hit + 1;
    }
  }
  return found;
}
