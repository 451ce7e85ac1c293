-- How many client requests one event stands for (UsageEvent.requests): 1 for every request the gateway
-- served or refused on its own, more for the refusals before routing that an edge aggregated into one
-- event beyond its rate (docs/reliability.md, "Refused requests"). Rows already stored are 1 (the
-- default): every event stood for one request before this version, so no backfill is needed.
--
-- The rollups count requests as sum(requests) instead of count(): the two views are dropped and created
-- again (as in 0007, not ALTER ... MODIFY QUERY; the same upgrade note applies).
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS requests UInt32 DEFAULT 1 AFTER error;
ALTER TABLE request_log ADD COLUMN IF NOT EXISTS requests UInt32 DEFAULT 1 AFTER error;

-- 0007's usage_minute_mv, counting each event's requests
DROP VIEW IF EXISTS usage_minute_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_minute_mv TO usage_minute AS
SELECT
    minute, provider, model, key_id,
    sum(n) AS requests,
    sumIf(n, st >= 400) AS errors,
    sum(tin) AS tokens_in,
    sum(tout) AS tokens_out,
    sum(tcached) AS tokens_cached,
    sum(tcwrite) AS tokens_cache_write,
    sum(treasoning) AS tokens_reasoning,
    sum(cost) AS cost_usd,
    sumIf(n, cost = 0 AND st < 400) AS free_requests,
    sum(latency) AS latency_ms_sum,
    sum(ifNull(ttft, 0)) AS ttft_ms_sum,
    countIf(ttft IS NOT NULL) AS ttft_count,
    sum(n_attempts) AS attempts
FROM
(
    -- source columns renamed: an alias (sum(cost_usd) AS cost_usd) would shadow the column it sums
    SELECT toStartOfMinute(ts) AS minute, provider, model, key_id, status AS st, toUInt64(requests) AS n,
           tokens_in AS tin, tokens_out AS tout, tokens_cached AS tcached, tokens_cache_write AS tcwrite,
           tokens_reasoning AS treasoning, cost_usd AS cost, latency_ms AS latency, ttft_ms AS ttft,
           attempts_count AS n_attempts
    FROM usage_events
)
GROUP BY minute, provider, model, key_id;

-- 0007's request_log_mv with the requests column
DROP VIEW IF EXISTS request_log_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS request_log_mv TO request_log AS
SELECT
    ts, id, request_id, endpoint, key_id, provider, model, upstream_model, stream, status, error, requests,
    latency_ms, ttft_ms, route_reason,
    toUInt16(least(65535, arraySum(a -> toUInt64(a.retries), parsed) + greatest(length(parsed), 1) - 1)) AS retries,
    tokens_in, tokens_out, tokens_cached, tokens_cache_write, tokens_reasoning, cost_usd, parsed AS attempts
FROM
(
    SELECT *, JSONExtract(attempts, 'Array(Tuple(provider String, upstream_model String, status UInt16, error Nullable(String), latency_ms Float64, retries UInt16))') AS parsed
    FROM usage_events
);
