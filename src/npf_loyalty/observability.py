"""Logging for Lambda and the console: JSON lines in the cloud, short text locally.

Only keys, counts, digests and versions are logged — never a client's data (ids included).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO") -> None:
    in_cloud = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or os.environ.get("_HANDLER"))
    handler = logging.StreamHandler(sys.stdout if in_cloud else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if in_cloud else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def fields(**values: Any) -> dict[str, Any]:
    """Structured context for a log line: `log.info("...", extra=fields(rows=10))`."""
    return {"fields": values}
