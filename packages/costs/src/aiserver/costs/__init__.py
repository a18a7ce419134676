"""aiserver price catalog: tables, upstream source, guarded refresh, exact cost calculator."""
