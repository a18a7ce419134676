"""aiserver foundation: settings, logging, PostgreSQL engine and pool, migrations."""

import os

# Piccolo finds its engine and app registry through this module (engine_finder). Setting it here,
# where the engine lives, means every process that imports aiserver's database layer agrees on it.
os.environ.setdefault("PICCOLO_CONF", "aiserver.core_db.piccolo_conf")
