"""``proxy-cli logs N``: the last requests, asked from the usage service over NATS."""

from __future__ import annotations

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_common import subjects
from llmgw_common.messages import UsageHistory, UsageHistoryQuery
from llmgw_common.nats_conn import RemoteError, request


async def recent_requests_text(nc, n: int) -> str:
    """Until the request-log query lands this summarises per-minute history; see docs/architecture.md."""
    try:
        history = await request(nc, subjects.USAGE_QUERY_HISTORY, UsageHistoryQuery(limit=n), UsageHistory, 3.0)
    except (NatsTimeoutError, NoRespondersError, RemoteError):
        return "the usage service is not reachable right now"
    if not history.rows:
        return "no requests recorded yet"
    lines = [f"{r.bucket:%H:%M} {r.provider}/{r.model}: {r.requests} req, {r.errors} errors, "
             f"{r.tokens_in}+{r.tokens_out} tokens, ${r.cost_usd}" for r in history.rows[-n:]]
    return "\n".join(lines)
