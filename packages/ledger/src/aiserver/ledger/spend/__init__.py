"""Spend: the hourly rollups of usage, folded from the outbox, and the spend questions answered
from them (rollups, the unfolded tail, and raw events where rollups cannot answer)."""
