"""Spend: the hourly rollups of usage, folded from the outbox, and the spend questions answered
from them (rollups, the unfolded tail, and raw events where rollups cannot answer)."""

from typing import Final

#: The most groups a spend question may keep (`top`). Here, where `aiserver-ledger spend
#: --help` reads it without importing the question's machinery (the database among it).
MAX_TOP: Final = 1000
