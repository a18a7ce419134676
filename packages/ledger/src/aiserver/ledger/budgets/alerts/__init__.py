"""Budget alerts after ingest wrote them: delivered as signed webhooks and listed for keys.

- `delivery`: due alerts sent as signed webhooks, retried with backoff for a day;
- `listing`: a project's alerts and their delivery attempts, for its keys;
- `store`: the SQL on `budget_alerts` and `webhook_deliveries`.
"""
