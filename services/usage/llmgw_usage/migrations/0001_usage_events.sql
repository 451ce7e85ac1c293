-- One row per usage event (one client request). The JetStream usage stream is
-- the system of record; this table is a projection that replay can rebuild.
-- Delivery is at-least-once, so the same event may be inserted more than once:
-- ReplacingMergeTree collapses rows with the same sorting key (the event's
-- date and id; an event's ts never changes), and every query that counts
-- reads with FINAL so a redelivered or replayed event is counted once.
CREATE TABLE IF NOT EXISTS usage_events
(
    id              String,
    ts              DateTime64(3, 'UTC'),
    request_id      String,
    endpoint        LowCardinality(String),
    key_id          String DEFAULT '',
    provider        LowCardinality(String),
    model           LowCardinality(String),
    upstream_model  LowCardinality(String),
    stream          Bool,
    tokens_in       UInt64,
    tokens_out      UInt64,
    tokens_cached   UInt64,
    cost_usd        Decimal(18, 9),
    latency_ms      Float64,
    ttft_ms         Nullable(Float64),
    status          UInt16,
    error           Nullable(String),
    attempts        String,
    attempts_count  UInt8,
    route_reason    String,
    schema_version  UInt16,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (toDate(ts), id);
