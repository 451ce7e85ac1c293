-- Two more token counters per event (UsageEvent.tokens_cache_write, tokens_reasoning):
--   tokens_cache_write: prompt tokens written to the provider's prompt cache (Anthropic's
--                       cache_creation_input_tokens), a part of tokens_in, priced above plain input;
--   tokens_reasoning:   reasoning (thinking) output tokens (OpenAI / Gemini reasoning_tokens), a part
--                       of tokens_out.
-- tokens_in stays the whole prompt (cache reads tokens_cached and cache writes included) and
-- tokens_out the whole output (reasoning included).
--
-- Rows already stored get 0: no event carried these counters before this version, so 0 is exact and
-- the rollups need no backfill. Events of an older producer (without the fields) get 0 as well.
--
-- The two views are dropped and created again with the new columns (after the columns were added to
-- their tables). Not ALTER TABLE ... MODIFY QUERY: a view changed that way deduplicates differently
-- after a restart (seen with chDB 26.9), so an insert cut short before the restart and repeated from the
-- journal after it (llmgw_usage/store.py) would count twice in usage_minute; a view made by CREATE
-- deduplicates the same before and after. Every statement is idempotent, and a run cut short is
-- finished by the next start.
--
-- Between the DROP and the CREATE usage_events has no view. chDB: nothing inserts then (migrations run
-- before the consumer starts). A ClickHouse server shared by several usage replicas: upgrade one
-- replica first and start the others once it runs; an insert of another replica in that instant would
-- be stored without its usage_minute and request_log rows.
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS tokens_cache_write UInt64 DEFAULT 0 AFTER tokens_cached;
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS tokens_reasoning UInt64 DEFAULT 0 AFTER tokens_cache_write;
ALTER TABLE usage_minute ADD COLUMN IF NOT EXISTS tokens_cache_write UInt64 DEFAULT 0 AFTER tokens_cached;
ALTER TABLE usage_minute ADD COLUMN IF NOT EXISTS tokens_reasoning UInt64 DEFAULT 0 AFTER tokens_cache_write;
ALTER TABLE request_log ADD COLUMN IF NOT EXISTS tokens_cache_write UInt64 DEFAULT 0 AFTER tokens_cached;
ALTER TABLE request_log ADD COLUMN IF NOT EXISTS tokens_reasoning UInt64 DEFAULT 0 AFTER tokens_cache_write;

-- 0004's usage_minute_mv with the two sums added
DROP VIEW IF EXISTS usage_minute_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_minute_mv TO usage_minute AS
SELECT
    minute, provider, model, key_id,
    count() AS requests,
    countIf(st >= 400) AS errors,
    sum(tin) AS tokens_in,
    sum(tout) AS tokens_out,
    sum(tcached) AS tokens_cached,
    sum(tcwrite) AS tokens_cache_write,
    sum(treasoning) AS tokens_reasoning,
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
           tokens_out AS tout, tokens_cached AS tcached, tokens_cache_write AS tcwrite,
           tokens_reasoning AS treasoning, cost_usd AS cost, latency_ms AS latency, ttft_ms AS ttft,
           attempts_count AS n_attempts
    FROM usage_events
)
GROUP BY minute, provider, model, key_id;

-- 0003's request_log_mv with the two columns added
DROP VIEW IF EXISTS request_log_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS request_log_mv TO request_log AS
SELECT
    ts, id, request_id, endpoint, key_id, provider, model, upstream_model, stream, status, error, latency_ms, ttft_ms,
    route_reason,
    toUInt16(least(65535, arraySum(a -> toUInt64(a.retries), parsed) + greatest(length(parsed), 1) - 1)) AS retries,
    tokens_in, tokens_out, tokens_cached, tokens_cache_write, tokens_reasoning, cost_usd, parsed AS attempts
FROM
(
    SELECT *, JSONExtract(attempts, 'Array(Tuple(provider String, upstream_model String, status UInt16, error Nullable(String), latency_ms Float64, retries UInt16))') AS parsed
    FROM usage_events
);
