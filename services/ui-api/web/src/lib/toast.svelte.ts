// Short messages at the corner of the screen (announced to screen readers).

export interface Toast {
  id: number;
  kind: "ok" | "error" | "info";
  text: string;
}

class Toasts {
  list = $state<Toast[]>([]);
}

export const toasts = new Toasts();
let next = 1;

export function toast(text: string, kind: Toast["kind"] = "ok", ms = 4000): void {
  const id = next++;
  toasts.list = [...toasts.list, { id, kind, text }];
  setTimeout(() => dismiss(id), kind === "error" ? ms * 2 : ms);
}

export function dismiss(id: number): void {
  toasts.list = toasts.list.filter((t) => t.id !== id);
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
