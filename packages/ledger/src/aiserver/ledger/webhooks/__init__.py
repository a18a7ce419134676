"""Outbound webhooks: where they may go (`targets`)."""
