"""Every SQL statement on the price catalog's tables, one module per table it owns.

- `metadata`: `ai_cost_metadata`, one row per source: its refresh state, the catalog version
  and its bump with the NOTIFY that tells the API replicas to reload;
- `prices`: `ai_model_costs` and `ai_model_aliases`: the versioned prices, written set-based
  by `write_catalog`, and read for the catalog, `status`, `fields` and `show`;
- `overrides`: `ai_cost_overrides`, the operator's prices;
- `runs`: `ai_cost_refresh_runs`, one row per refresh attempt that reached the upstream.

The functions take a connection and run inside the caller's transaction, so a caller composes
them into one (a refresh, an override and its version bump). The schema itself is the
migrations' (`piccolo_migrations/`). Nothing here imports asyncpg or Piccolo at run time: the
calculator's path (`catalog.load_catalog`) reads through these modules and stays light.
"""
