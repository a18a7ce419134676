"""The task-runner job of this domain, by name: the API enqueues it, the task runner runs it."""

from typing import Final

#: Convert one uploaded document: `process_document(document_id: str)`.
PROCESS_JOB: Final = "process_document"


def process_job_id(document_id: str) -> str:
    """The arq job id of a document's conversion: one job per document, however often asked."""
    return f"document:{document_id}"
