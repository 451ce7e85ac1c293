-- Inserts become retryable as a whole: every insert into usage_events carries
-- an insert_deduplication_token (also stored in the rows as insert_token), and
-- the tables keep the tokens of their last 10,000 blocks. A materialized view
-- is not atomic with its source table: a process killed in the middle of an
-- insert (chDB runs in the usage process) can leave the event rows stored but
-- not their usage_minute rows. The usage service journals every insert
-- (state/clickhouse.journal, see llmgw_usage/store.py) and, after a crash,
-- repeats an insert whose rows landed with the same token: ClickHouse skips the
-- blocks every table already holds (deduplicate_blocks_in_dependent_materialized_views)
-- and writes only what is missing, so the rollups catch up without counting twice.
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS insert_token String DEFAULT '' CODEC(ZSTD(1));
ALTER TABLE usage_events MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE usage_minute MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE request_log MODIFY SETTING non_replicated_deduplication_window = 10000;
