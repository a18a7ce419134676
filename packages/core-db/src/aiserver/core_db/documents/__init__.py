"""Documents and their conversion outputs, shared by the API (upload, read) and the task runner
(convert). They live here because both services use them and core-db is their common base."""
