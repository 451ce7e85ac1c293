-- The request log: ONE ROW PER CLIENT REQUEST, not per upstream attempt.
-- Why per request: the log answers "what happened to my call" (status the
-- client got, error, latency, time to first token, route reason, how many
-- retries and fail-overs it took), and one usage event is exactly one request,
-- so the log follows the event stream one to one and pages by (ts, id). The
-- upstream attempts of a request (provider, status, error, latency, retries of
-- each) are kept in the `attempts` array on the same row: per-attempt analytics
-- (provider error rates including fail-overs) are one ARRAY JOIN away.
--
-- It is filled by a materialized view from usage_events, so it can never
-- disagree with the raw events and a replay rebuilds it like any other view.
-- The ingest never inserts an event id twice into usage_events (see
-- llmgw_usage/projection.py), so the view never sees a duplicate; the table is
-- still a ReplacingMergeTree on (ts, id) as a second line of defence.
-- Rows older than 90 days are dropped (the stream's default retention);
-- ALTER TABLE request_log MODIFY TTL ... to keep them longer.
CREATE TABLE IF NOT EXISTS request_log
(
    ts              DateTime64(3, 'UTC'),
    id              String,
    request_id      String,
    endpoint        LowCardinality(String),
    key_id          LowCardinality(String),
    provider        LowCardinality(String),
    model           LowCardinality(String),
    upstream_model  LowCardinality(String),
    stream          Bool,
    status          UInt16,
    error           Nullable(String),
    latency_ms      Float64,
    ttft_ms         Nullable(Float64),
    route_reason    String,
    -- upstream tries beyond the first: retries on one provider plus fail-overs
    retries         UInt16,
    tokens_in       UInt64,
    tokens_out      UInt64,
    tokens_cached   UInt64,
    cost_usd        Decimal(18, 9),
    attempts        Array(Tuple(provider String, upstream_model String, status UInt16, error Nullable(String),
                                latency_ms Float64, retries UInt16)),
    INDEX idx_rl_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_rl_key_id key_id TYPE set(1000) GRANULARITY 4,
    INDEX idx_rl_status status TYPE minmax GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, id)
TTL toDateTime(ts) + INTERVAL 90 DAY;

-- Existing events (a database older than this migration): copied once, while
-- the log is still empty. Runs before the view exists, when the usage service
-- is not inserting yet (migrations run before the consumer starts).
INSERT INTO request_log
SELECT
    ts, id, request_id, endpoint, key_id, provider, model, upstream_model, stream, status, error, latency_ms, ttft_ms,
    route_reason,
    toUInt16(least(65535, arraySum(a -> toUInt64(a.retries), parsed) + greatest(length(parsed), 1) - 1)) AS retries,
    tokens_in, tokens_out, tokens_cached, cost_usd, parsed AS attempts
FROM
(
    SELECT *, JSONExtract(attempts, 'Array(Tuple(provider String, upstream_model String, status UInt16, error Nullable(String), latency_ms Float64, retries UInt16))') AS parsed
    FROM usage_events FINAL
)
WHERE (SELECT count() FROM request_log) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS request_log_mv TO request_log AS
SELECT
    ts, id, request_id, endpoint, key_id, provider, model, upstream_model, stream, status, error, latency_ms, ttft_ms,
    route_reason,
    toUInt16(least(65535, arraySum(a -> toUInt64(a.retries), parsed) + greatest(length(parsed), 1) - 1)) AS retries,
    tokens_in, tokens_out, tokens_cached, cost_usd, parsed AS attempts
FROM
(
    SELECT *, JSONExtract(attempts, 'Array(Tuple(provider String, upstream_model String, status UInt16, error Nullable(String), latency_ms Float64, retries UInt16))') AS parsed
    FROM usage_events
);

-- Optional request and response bodies, one row per event that carried them
-- (UsageEvent.request_body / response_body: off by default, the edge does not
-- capture them yet). The usage service redacts credentials
-- (llmgw_common.logs.redact) and caps each body before inserting, and the rows
-- expire after 7 days: bodies hold user content and are only for debugging.
-- Not a view of usage_events (bodies are not kept there); inserted by the
-- ingest before the event itself, so a redelivery repeats both and the
-- ReplacingMergeTree keeps one.
CREATE TABLE IF NOT EXISTS request_bodies
(
    ts              DateTime64(3, 'UTC'),
    id              String,
    request_body    String,
    response_body   String,
    truncated       Bool
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (toDate(ts), id)
TTL toDateTime(ts) + INTERVAL 7 DAY
SETTINGS ttl_only_drop_parts = 1;
