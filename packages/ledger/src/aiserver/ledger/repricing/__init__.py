"""Repricing: recorded usage events priced again with the catalog of today, with an audit trail.

- :mod:`.runs`: asking for a run (a filter, a dry run or not) and reading runs back, each
  checked against who asks;
- :mod:`.execution`: doing a run in bounded batches, each one transaction (events, adjustments,
  rollups and the run's cursor together), resumable after a crash;
- :mod:`.revalue`: one event priced again and what that changes (pure);
- :mod:`.automatic`: after a catalog change, the unpriced events it can now price; and the runs
  that were cut off, finished;
- :mod:`.store`: every statement of it.
"""

from typing import Final

#: Events per batch (one transaction each): big enough to amortize the round trips, small
#: enough that a batch's locks are held for a moment. Here, where `aiserver-ledger reprice
#: --help` reads it without importing the execution.
BATCH_SIZE: Final = 500
