"""Writes ui-api's OpenAPI document to services/ui-api/web/openapi.json, the snapshot the web UI's typed
API client is generated from (``npm run gen``: openapi-typescript). Run it after changing a route:

    .venv/bin/python scripts/export_openapi.py          # write the snapshot
    .venv/bin/python scripts/export_openapi.py --check  # exit 1 when it is out of date

tests/e2e/test_web_ui.py checks that the snapshot is current.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent.parent / "services" / "ui-api" / "web" / "openapi.json"


def document() -> str:
    from llmgw_ui_api.main import UiApiSettings, create_app

    with tempfile.TemporaryDirectory() as state:  # nothing is started or written: the app is only built
        settings = UiApiSettings(LLMGW_STATE_DIR=state, LLMGW_ADMIN_TOKEN="export-" + "x" * 32,
                                 LLMGW_ADMIN_READONLY_TOKEN="export-view-" + "x" * 32)
        doc = create_app(settings).openapi()
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = document()
    if "--check" in argv:
        current = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
        if current != text:
            print(f"{SNAPSHOT} is out of date: run python scripts/export_openapi.py", file=sys.stderr)
            return 1
        print(f"{SNAPSHOT} is current")
        return 0
    SNAPSHOT.write_text(text)
    print(f"wrote {SNAPSHOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
