"""Usage events: what applications report of their model calls, priced and kept exactly once.

- :mod:`.events`: an event as reported, and its checks (key, time, tags, usage);
- :mod:`.valuation`: its price as of its `occurred_at` (priced, partially priced or unpriced);
- :mod:`.ingest`: recording a request's events in one transaction (recorded, duplicate,
  conflict, invalid);
- :mod:`.reading`: reading them back: a project's events filtered and newest first, a page at
  a time (keyset), and one event by its id;
- :mod:`.importing`: recording JSON lines a chunk per transaction (`aiserver-ledger import`);
- :mod:`.partitions`: the monthly partitions, made ahead and dropped after the retention;
- :mod:`.store`: every statement on the usage tables (`events`, `reading`, `partitions`).
"""

from typing import Final, Literal

#: The formats an export writes (`.export`). Here, where `aiserver-ledger export --help` reads
#: them without importing the export's machinery (the database and the logging among it).
ExportFormat = Literal["csv", "jsonl", "focus"]
FORMATS: Final[tuple[ExportFormat, ...]] = ("csv", "jsonl", "focus")
