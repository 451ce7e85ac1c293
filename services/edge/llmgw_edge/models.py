"""``GET /v1/models``: every logical model, alias and ``provider/model`` name the config serves."""

from __future__ import annotations

from llmgw_common.config import GatewayConfig


def list_models(config: GatewayConfig, created: int) -> dict:
    data: list[dict] = []
    seen: set[str] = set()

    def add(model_id: str, owner: str) -> None:
        if model_id not in seen:
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
