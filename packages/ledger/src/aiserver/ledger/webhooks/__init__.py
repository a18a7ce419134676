"""Outbound webhooks: where they may go (`targets`), how they are signed (`signing`), and how
one is sent to an address the check approved (`sending`)."""
