"""Spend: hourly rollups of usage, and the spend questions answered from them."""
