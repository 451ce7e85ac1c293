-- Skipping indexes for request-log look-ups (by request id, by API key).
ALTER TABLE usage_events ADD INDEX IF NOT EXISTS idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4;
ALTER TABLE usage_events ADD INDEX IF NOT EXISTS idx_key_id key_id TYPE bloom_filter(0.01) GRANULARITY 4;
