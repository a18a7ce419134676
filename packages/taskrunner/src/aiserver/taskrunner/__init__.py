"""aiserver task runner (arq): database initialization, price catalog refresh, documents."""
