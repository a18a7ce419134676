"""aiserver usage ledger: the tenants (projects) and who may touch them (API keys)."""
