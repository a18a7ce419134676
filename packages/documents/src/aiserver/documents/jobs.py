"""The task-runner job of this domain, by name: the API enqueues it, the task runner runs it."""

from typing import Final

#: Convert one uploaded document: `process_document(document_id: str)`.
PROCESS_JOB: Final = "process_document"
#: The task runner's hourly look for documents whose job was lost (`documents_sweep_task`).
SWEEP_TASK: Final = "documents_sweep_task"
#: A document is looked at by the sweep once it has waited this long, queued or processing: far
#: more than between the API's insert of its row and the enqueue of its job.
SWEEP_AFTER_S: Final = 15 * 60
#: The most documents one sweep looks at (the oldest first); the next sweep takes the rest.
SWEEP_LIMIT: Final = 1000
#: Documents past DOCUMENT_RETENTION_DAYS are deleted this many per transaction (each may hold
#: up to DOCUMENT_MAX_IMAGE_BYTES of pages), up to RETENTION_LIMIT and for RETENTION_BUDGET_S
#: per sweep (well inside the sweep job's timeout): the next sweep takes the rest.
RETENTION_BATCH: Final = 10
RETENTION_LIMIT: Final = 10_000
RETENTION_BUDGET_S: Final = 120.0


#: How long a document's job may wait in the queue before the queue (arq) drops it unrun. arq's
#: own default is a day: a task runner down for longer (or a backlog of that much) left every
#: document uploaded before then `queued` for good, its job gone without a try.
JOB_EXPIRES_S: Final = 30 * 24 * 3600


def process_job_id(document_id: str) -> str:
    """The arq job id of a document's conversion: one job per document, however often asked."""
    return f"document:{document_id}"
