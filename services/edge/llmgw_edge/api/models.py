"""``GET /v1/models`` and ``GET /v1/models/{id}``: every logical model, alias and ``provider/model``
name the config serves, in OpenAI's shape, or Anthropic's when the client sends ``anthropic-version``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from llmgw_common.config import GatewayConfig

from ..core.errors import GatewayError


def list_models(config: GatewayConfig, created: int, allowed: Callable[[str], bool] | None = None) -> dict:
    """Every name a client may ask for; ``allowed``: only those a key may use."""
    data: list[dict] = []
    seen: set[str] = set()

    def add(model_id: str, owner: str) -> None:
        if model_id not in seen and (allowed is None or allowed(model_id)):
            seen.add(model_id)
            data.append({"id": model_id, "object": "model", "created": created, "owned_by": owner})

    enabled = [p for p in config.providers if p.enabled]
    for p in enabled:
        for m in p.models:
            add(m.name, p.id)
    for alias, target in config.routing.aliases.items():
        add(alias, "alias:" + target)
    for p in enabled:
        for m in p.models:
            add(f"{p.id}/{m.name}", p.id)
    return {"object": "list", "data": data}


def retrieve_model(config: GatewayConfig, created: int, model_id: str) -> dict:
    for entry in list_models(config, created)["data"]:
        if entry["id"] == model_id:
            return entry
    raise GatewayError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                       code="model_not_found", param="model")


def anthropic_model(entry: dict) -> dict:
    created = datetime.fromtimestamp(entry["created"], timezone.utc).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": entry["id"], "display_name": entry["id"], "created_at": created}


def anthropic_list(listed: dict) -> dict:
    data = [anthropic_model(e) for e in listed["data"]]
    return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
