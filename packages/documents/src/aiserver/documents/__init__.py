"""aiserver documents: uploads, their tables, and their conversion to PDF, text and page images."""
