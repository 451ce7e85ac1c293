"""Whether a model can serve a request for what the request is, and which model serves it when not.

Two things decide it, both per (provider, model), before limits or health:

- **capabilities**: a request that uses tools, images, a JSON schema, reasoning or embeddings (the edge
  lists them in ``RouteRequest.needs``) goes only to models that have them. A model's capabilities are its
  ``capabilities`` in the config, else what the price tables say (LiteLLM's ``supports_*`` flags, from the
  pricing service); one stated nowhere is assumed available (permissive: a model the tables do not know
  routes as before, and the upstream's own error still fails over);
- **the context window**: the estimated prompt plus ``max_tokens`` must fit the model's ``context_window``.

When every provider of the model was skipped for its window, ``routing.fallbacks.context_window`` names the
models to plan instead; an upstream's own refusal (context length, content filter) comes back from the edge
as ``RouteRequest.fallback`` and plans that kind's fallback models. When nothing fits, the answer is a 400
that says what is missing (``unservable``), never a 429 the client would retry.
"""

from __future__ import annotations

from typing import Mapping

from llmgw_common.config import GatewayConfig, ModelConfig
from llmgw_common.messages import ErrorInfo, RouteRequest, Skipped

LACKS = "lacks "  # the start of a capability skip's reason
TOO_LONG = "prompt of "  # the start of a context-window skip's reason (policy.plan_reusable looks for it)
ALREADY_TRIED = "already tried"  # policy's reason for a provider a failover excluded
FALLBACK_WORDS = {"context_window": "context window", "content_filter": "content filter"}


def missing_capabilities(model: ModelConfig, needs: list[str], known: Mapping[str, bool] | None = None) -> list[str]:
    """The capabilities the request needs that the model lacks: the config says so, or else the price
    tables (``known``) do; a capability neither states counts as had."""
    stated = known or {}
    return [need for need in needs if model.capabilities.says(need, stated.get(need)) is False]


def unfit_reason(model: ModelConfig, request: RouteRequest, est_in: int,
                 known: Mapping[str, bool] | None = None) -> str | None:
    """Why this model cannot serve this request whatever its load, or None. ``known``: what the price
    tables say the model can serve."""
    missing = missing_capabilities(model, request.needs, known)
    if missing:
        return f"{LACKS}{', '.join(missing)} (model {model.name})"
    window = model.context_window
    answer = request.max_tokens or 0
    if window is not None and est_in + answer > window:
        return f"{TOO_LONG}~{est_in} tokens (+{answer} answer) exceeds its context window of {window} (model {model.name})"
    return None


def window_refused_all(skipped: list[Skipped]) -> bool:
    return any(s.reason.startswith(TOO_LONG) for s in skipped)


def fallback_models(config: GatewayConfig, why: str, model: str, requested: str) -> list[str]:
    """The logical names of ``why``'s fallback models for ``model`` (aliases resolved), in order."""
    aliases = config.routing.aliases
    names = config.routing.fallbacks.for_model(why, model, requested)
    return [aliases.get(name, name) for name in names if aliases.get(name, name) != model]


def unservable(model: str, request: RouteRequest, skipped: list[Skipped], est_in: int) -> ErrorInfo | None:
    """The 400 for a request no provider can serve for what it is (capabilities, window), or None when
    nothing was skipped for that, or a failover left no candidate (its last upstream error says more)."""
    lacking = [s for s in skipped if s.reason.startswith(LACKS)]
    too_long = [s for s in skipped if s.reason.startswith(TOO_LONG)]
    if any(s.reason.startswith(ALREADY_TRIED) for s in skipped):
        return None
    if lacking:
        needs = sorted({n for s in lacking for n in s.reason[len(LACKS):].split(" (")[0].split(", ")})
        who = "; ".join(f"{s.provider} {s.reason}" for s in lacking)
        return ErrorInfo(status=400, code="capability_not_supported",
                         message=f"No provider of model `{model}` supports {' and '.join(needs)}, which this "
                                 f"request uses: {who}.")
    if too_long:
        answer = request.max_tokens or 0
        windows = "; ".join(f"{s.provider} {s.reason[s.reason.index('context window'):]}" for s in too_long)
        return ErrorInfo(status=400, code="context_length_exceeded",
                         message=f"The prompt of ~{est_in} tokens plus {answer} for the answer exceeds the "
                                 f"context window of model `{model}` and of every fallback in "
                                 f"routing.fallbacks.context_window: {windows}.")
    return None


def no_fallback(model: str, why: str) -> ErrorInfo:
    return ErrorInfo(status=400, code=f"{why}_no_fallback",
                     message=f"routing.fallbacks.{why} names no model for `{model}` that can serve this request.")
