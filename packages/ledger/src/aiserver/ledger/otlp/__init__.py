"""OpenTelemetry GenAI spans as usage events: `POST /v1/otlp/v1/traces` (docs/otlp.md).

- :mod:`.wire`: OTLP/HTTP bodies (protobuf or OTLP JSON, gzip) decoded, and the answers
  (`ExportTraceServiceResponse`, `google.rpc.Status`) encoded in the request's encoding;
- :mod:`.spans`: which spans are model calls, and each as a usage event;
- :mod:`.export`: a request's spans recorded through the usage ingest
  (`aiserver.ledger.usage.ingest`: one transaction, exactly once, budgets), and the answer's
  partial success.
"""
