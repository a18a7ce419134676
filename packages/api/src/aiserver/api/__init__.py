"""aiserver HTTP API (Litestar): the model price catalog and exact costs of model calls."""
