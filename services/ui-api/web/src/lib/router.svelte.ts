// Client-side pages (history API). Keep in step with PAGES in services/ui-api/llmgw_ui_api/web.py,
// which answers index.html for each of these paths.

export const ROUTES = [
  { path: "/overview", label: "Overview" },
  { path: "/providers", label: "Providers" },
  { path: "/requests", label: "Request log" },
  { path: "/keys", label: "Keys" },
  { path: "/config", label: "Config" },
  { path: "/pricing", label: "Pricing" },
] as const;

export type RoutePath = (typeof ROUTES)[number]["path"];

function normalize(path: string): RoutePath {
  const found = ROUTES.find((r) => r.path === path.replace(/\/+$/, ""));
  return found ? found.path : "/overview";
}

class Nav {
  path = $state<RoutePath>(normalize(location.pathname));
}

export const nav = new Nav();

export function navigate(path: string, replace = false): void {
  const target = normalize(path);
  if (target !== location.pathname) {
    if (replace) history.replaceState(null, "", target);
    else history.pushState(null, "", target);
  }
  nav.path = target;
}

addEventListener("popstate", () => {
  nav.path = normalize(location.pathname);
});

if (location.pathname !== nav.path) history.replaceState(null, "", nav.path + location.search);
