"""Every statement on the usage tables: `events` (writing them), `partitions`."""
