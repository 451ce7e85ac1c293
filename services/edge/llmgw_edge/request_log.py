"""``proxy-cli logs N``: the last N requests from the request log, asked of the usage service over NATS."""

from __future__ import annotations

from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_common import subjects
from llmgw_common.messages import UsageRequests, UsageRequestsQuery
from llmgw_common.nats_conn import RemoteError, request


async def recent_requests_text(nc, n: int) -> str:
    try:
        page = await request(nc, subjects.USAGE_QUERY_REQUESTS, UsageRequestsQuery(limit=n), UsageRequests, 3.0)
    except (NatsTimeoutError, NoRespondersError, RemoteError):
        return "the usage service is not reachable right now"
    if not page.rows:
        return "no requests recorded yet"
    lines = [f"last {len(page.rows)} requests, newest first:"]
    for r in page.rows:
        ttft = f", ttft {r.ttft_ms:.0f} ms" if r.ttft_ms is not None else ""
        error = f" — {r.error}" if r.error else ""
        lines.append(f"{r.ts:%H:%M:%S} {r.status} {r.model} via {r.provider or '-'}: "
                     f"{r.tokens_in}+{r.tokens_out} tokens, ${r.cost_usd}, {r.latency_ms:.0f} ms{ttft}, "
                     f"{len(r.attempts)} attempt(s){error}")
    return "\n".join(lines)
