// What the UI remembers in this browser: the theme and Grafana's address. Nothing secret.

export type ThemeMode = "system" | "light" | "dark";
const THEME_KEY = "llmgw.theme";
const GRAFANA_KEY = "llmgw.grafana";
export const DEFAULT_GRAFANA = "http://localhost:3000";

function read(key: string): string | null {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function write(key: string, value: string | null): void {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch {
    // private mode: remembered for this page only
  }
}

class Prefs {
  theme = $state<ThemeMode>((read(THEME_KEY) as ThemeMode) || "system");
  grafana = $state(read(GRAFANA_KEY) || DEFAULT_GRAFANA);
}

export const prefs = new Prefs();

export function applyTheme(): void {
  const root = document.documentElement;
  if (prefs.theme === "system") delete root.dataset.theme;
  else root.dataset.theme = prefs.theme;
}

export function cycleTheme(): void {
  prefs.theme = prefs.theme === "system" ? "dark" : prefs.theme === "dark" ? "light" : "system";
  write(THEME_KEY, prefs.theme === "system" ? null : prefs.theme);
  applyTheme();
}

export function setGrafana(url: string): void {
  prefs.grafana = url.trim().replace(/\/+$/, "") || DEFAULT_GRAFANA;
  write(GRAFANA_KEY, prefs.grafana === DEFAULT_GRAFANA ? null : prefs.grafana);
}
