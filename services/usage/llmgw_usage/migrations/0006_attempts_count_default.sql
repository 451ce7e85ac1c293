-- The ingest inserts usage events as JSON (JSONEachRow): ClickHouse parses each
-- event's JSON itself instead of the usage service building rows in Python (see
-- llmgw_usage/store.py). The events carry their attempts but not how many there
-- are: ClickHouse computes the count from the attempts while inserting.
ALTER TABLE usage_events MODIFY COLUMN attempts_count UInt8 DEFAULT toUInt8(least(255, JSONLength(attempts)));
