"""The usage service: projects the JetStream usage stream into ClickHouse
(analytics) and the Redis sliding windows (live limits), and answers usage
queries over NATS."""
