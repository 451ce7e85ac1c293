-- Per-minute rollups by (provider, model, key_id), filled by a materialized
-- view on usage_events. Grafana and the history query read these instead of
-- the raw events.
--
-- A materialized view fires on every insert, duplicates included (the
-- ReplacingMergeTree of usage_events only collapses them later, at merge time),
-- so the rollups are only right because the ingest never inserts an event id
-- twice: see llmgw_usage/projection.py (a Redis claim per event id, then a
-- check of which ids usage_events already holds, then one insert).
--
-- SummingMergeTree: rows with the same key are summed when parts merge, so a
-- minute may still be spread over several rows: ALWAYS read with sum() and
-- GROUP BY, e.g.
--   SELECT minute, provider, sum(requests), sum(cost_usd) FROM usage_minute
--   WHERE minute >= now() - INTERVAL 1 DAY GROUP BY minute, provider ORDER BY minute
-- Averages: sum(latency_ms_sum) / sum(requests), sum(ttft_ms_sum) / sum(ttft_count).
CREATE TABLE IF NOT EXISTS usage_minute
(
    minute          DateTime('UTC'),
    provider        LowCardinality(String),
    model           LowCardinality(String),
    key_id          LowCardinality(String),
    requests        UInt64,
    errors          UInt64,            -- status >= 400
    tokens_in       UInt64,
    tokens_out      UInt64,
    tokens_cached   UInt64,
    cost_usd        Decimal(18, 9),
    free_requests   UInt64,            -- cost_usd = 0 and status < 400
    latency_ms_sum  Float64,
    ttft_ms_sum     Float64,           -- over the requests that reported a time to first token
    ttft_count      UInt64,
    attempts        UInt64             -- upstream attempts (fail-overs included)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, provider, model, key_id);

-- Existing events, copied once while the rollups are still empty (before the
-- view exists; migrations run before the consumer starts).
INSERT INTO usage_minute
SELECT
    minute, provider, model, key_id,
    count() AS requests,
    countIf(st >= 400) AS errors,
    sum(tin) AS tokens_in,
    sum(tout) AS tokens_out,
    sum(tcached) AS tokens_cached,
    sum(cost) AS cost_usd,
    countIf(cost = 0 AND st < 400) AS free_requests,
    sum(latency) AS latency_ms_sum,
    sum(ifNull(ttft, 0)) AS ttft_ms_sum,
    countIf(ttft IS NOT NULL) AS ttft_count,
    sum(n_attempts) AS attempts
FROM
(
    -- source columns renamed: an alias (sum(cost_usd) AS cost_usd) would shadow the column it sums
    SELECT toStartOfMinute(ts) AS minute, provider, model, key_id, status AS st, tokens_in AS tin,
           tokens_out AS tout, tokens_cached AS tcached, cost_usd AS cost, latency_ms AS latency, ttft_ms AS ttft,
           attempts_count AS n_attempts
    FROM usage_events FINAL
)
WHERE (SELECT count() FROM usage_minute) = 0
GROUP BY minute, provider, model, key_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_minute_mv TO usage_minute AS
SELECT
    minute, provider, model, key_id,
    count() AS requests,
    countIf(st >= 400) AS errors,
    sum(tin) AS tokens_in,
    sum(tout) AS tokens_out,
    sum(tcached) AS tokens_cached,
    sum(cost) AS cost_usd,
    countIf(cost = 0 AND st < 400) AS free_requests,
    sum(latency) AS latency_ms_sum,
    sum(ifNull(ttft, 0)) AS ttft_ms_sum,
    countIf(ttft IS NOT NULL) AS ttft_count,
    sum(n_attempts) AS attempts
FROM
(
    -- source columns renamed: an alias (sum(cost_usd) AS cost_usd) would shadow the column it sums
    SELECT toStartOfMinute(ts) AS minute, provider, model, key_id, status AS st, tokens_in AS tin,
           tokens_out AS tout, tokens_cached AS tcached, cost_usd AS cost, latency_ms AS latency, ttft_ms AS ttft,
           attempts_count AS n_attempts
    FROM usage_events
)
GROUP BY minute, provider, model, key_id;
