"""All SQL on `usage_rollups` (and the outbox rows that the folding consumes)."""
