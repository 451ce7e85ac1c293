// Gateway keys as the pages show them.

import type { KeyView } from "./api/types";

/** A secret's display prefix with one ellipsis ("llmgw-ab12…"): the API's prefix ends with one already. */
export function keyPrefix(prefix: string | null | undefined): string {
  const bare = (prefix ?? "").replace(/(…|\.\.\.)+$/u, "");
  return bare ? `${bare}…` : "";
}

/** A key's name by its id (the request log names keys, not ids); the id when the key is unknown. */
export function keyName(keys: readonly KeyView[], id: string | null | undefined): string {
  if (!id) return "—";
  return keys.find((k) => k.id === id)?.name ?? id;
}
