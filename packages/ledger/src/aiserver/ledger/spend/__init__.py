"""Spend: the hourly rollups of usage, folded from the outbox, and the answers read from them."""
