"""Budgets: limits on what a project (or part of it, by tags and model) may spend in a period.

- `periods`: the window of a period that holds an instant, in the project's time zone;
- `rules`: what a budget may be (checked before anything is stored);
- `store`: the SQL on `budgets` and `budget_windows`;
- `service`: create, list, show, change and delete, each checked against who asks;
- `reservations`: hard limits: reserve, settle, release, expire (its SQL in `reservations.store`).
- `alerts`: the alerts that ingest wrote, delivered as signed webhooks and listed for keys.
"""
