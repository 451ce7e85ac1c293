"""Domain logic: which price applies to (provider, upstream model), and where it came from.

Order: the model's price in the gateway config, then the bundled table (by
exact name, then by the last part of a ``vendor/model`` name), else unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmgw_common.config import GatewayConfig, Price
from llmgw_common.messages import PriceInfo, PriceKey


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price]
    snapshot_date: str

    @classmethod
    def bundled(cls) -> "PriceTable":
        raw = json.loads((Path(__file__).parent / "data" / "prices.json").read_text(encoding="utf-8"))
        return cls({name: Price.model_validate(p) for name, p in raw["prices"].items()}, raw["snapshot_date"])

    def find(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        short = model.rsplit("/", 1)[-1]
        return self.prices.get(short)


def effective_price(config: GatewayConfig, table: PriceTable, key: PriceKey) -> PriceInfo:
    provider = config.provider(key.provider)
    if provider is not None:
        for m in provider.models:
            if m.upstream_name == key.model and m.price is not None:
                return PriceInfo(provider=key.provider, model=key.model, price=m.price, source="config")
    found = table.find(key.model)
    if found is not None:
        return PriceInfo(provider=key.provider, model=key.model, price=found, source="bundled")
    return PriceInfo(provider=key.provider, model=key.model, price=None, source="unknown")


def all_prices(config: GatewayConfig, table: PriceTable) -> list[PriceInfo]:
    """The effective price of every model every configured provider serves."""
    return [effective_price(config, table, PriceKey(provider=p.id, model=m.upstream_name))
            for p in config.providers for m in p.models]
