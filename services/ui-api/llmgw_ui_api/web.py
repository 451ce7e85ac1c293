"""The web UI: the single-page app built from ``services/ui-api/web`` into ``./static``, served at ``/``.

- A page path (``PAGES``: ``/``, ``/overview``, ``/requests``, ...) answers ``index.html``: the app
  routes in the browser (the SPA fallback), so a reload or a bookmark of any page works.
- ``/assets/...`` (content-hashed names: cached for a year) and the few files at the root answer the
  built files.
- These paths need no credential (``is_open``, used by ``auth``): the page and its scripts hold no data,
  and every ``/api`` call the page makes needs the login (``POST /api/login``).
- Not built (no npm when ``make`` ran): ``/`` answers a short page saying how to build it.

It is installed as the router's default (what runs when no route matched), not as a route or a mount:
routes included after it keep working, unknown paths outside these keep the JSON 404, and the OpenAPI
document is unchanged.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, HTMLResponse, Response

STATIC_DIR = Path(__file__).parent / "static"
# the app's pages (web/src/lib/router.ts): index.html for each
PAGES = frozenset({"/", "/login", "/overview", "/providers", "/requests", "/keys", "/config", "/pricing"})
ROOT_FILES = frozenset({"/favicon.svg"})
ASSETS = "/assets/"

# the page loads only its own files and talks only to its own origin
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LLM Gateway: web UI not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem">
<h1>The web UI is not built</h1>
<p>The admin API is running; its web UI needs Node.js 20.19 or newer (with npm) to be built once:</p>
<pre>make web        # or: cd services/ui-api/web &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>then reload this page. (<code>make run</code> builds it by itself whenever npm is on the PATH.)
Expected files in: <code>{where}</code></p>
</body></html>
"""


def is_open(path: str) -> bool:
    """A path of the web UI itself (a page, a built file): served without a credential."""
    if path in PAGES or path in ROOT_FILES:
        return True
    return path.startswith(ASSETS) and ".." not in path and "//" not in path and "\\" not in path


def _file(static_dir: Path, path: str) -> Path | None:
    candidate = (static_dir / path.lstrip("/")).resolve()
    root = static_dir.resolve()
    if root not in candidate.parents or not candidate.is_file():
        return None
    return candidate


def response_for(path: str, static_dir: Path = STATIC_DIR) -> Response | None:
    """What the web UI answers for ``path`` (GET or HEAD), None when it is not the UI's."""
    if not is_open(path):
        return None
    index = static_dir / "index.html"
    if path in PAGES:
        if not index.is_file():
            return HTMLResponse(NOT_BUILT.replace("{where}", html.escape(str(static_dir))), status_code=200,
                                headers={**SECURITY_HEADERS, "cache-control": "no-store"})
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers={**SECURITY_HEADERS, "cache-control": "no-cache"})
    found = _file(static_dir, path)
    if found is None:
        return None
    cache = "public, max-age=31536000, immutable" if path.startswith(ASSETS) else "no-cache"
    return FileResponse(found, headers={**SECURITY_HEADERS, "cache-control": cache})


def install(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serves the web UI at ``/`` from ``static_dir`` (what no route answers goes on as before)."""
    fallback = app.router.default

    async def web_ui(scope, receive, send) -> None:
        response = None
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            response = response_for(scope["path"], static_dir)
        if response is None:
            await fallback(scope, receive, send)
            return
        await response(scope, receive, send)

    app.router.default = web_ui
