"""aiserver-client: report AI model calls to an aiserver ledger."""
