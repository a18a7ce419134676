"""All SQL on `usage_rollups`, the outbox rows that folding consumes, and the spend reads."""
