"""Every statement on the usage tables: `events` (writing them), `reading` (reading them
back), `partitions`."""
