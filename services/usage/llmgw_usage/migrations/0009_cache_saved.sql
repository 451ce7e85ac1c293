-- What prompt caching saved per event (UsageEvent.cache_saved_usd): its cache reads (tokens_cached) at
-- the input price minus at the cache-read price, as the edge priced the event. Rows already stored get 0:
-- the prices of their time are not known here, so a backfill would invent them; the Overview and Grafana
-- then show savings from this version on.
--
-- usage_minute sums it; its view is dropped and created again (as in 0007 and 0008, not ALTER ... MODIFY
-- QUERY; the same upgrade note applies).
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS cache_saved_usd Decimal(18, 9) DEFAULT 0 AFTER cost_usd;
ALTER TABLE usage_minute ADD COLUMN IF NOT EXISTS cache_saved_usd Decimal(18, 9) DEFAULT 0 AFTER cost_usd;

-- 0008's usage_minute_mv with the savings summed
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
    sum(saved) AS cache_saved_usd,
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
           tokens_reasoning AS treasoning, cost_usd AS cost, cache_saved_usd AS saved, latency_ms AS latency,
           ttft_ms AS ttft, attempts_count AS n_attempts
    FROM usage_events
)
GROUP BY minute, provider, model, key_id;
