"""The request id (PROTOCOL.md 2.2, `request_id`) of the request being served, in every log
line written while serving it: a ContextVar set around the request's task, and the log filter
and formatters that write it (` request_id=<id>` at the end of a text line, a key of a JSON
line)."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

__all__ = ["JsonFormatter", "RequestIdFilter", "TextFormatter", "current_request_id"]

# Set by the server around a request's task (tasks it starts inherit it), so a line logged
# deep inside (a two-phase commit's coordinator, an internal error) names the request.
current_request_id: ContextVar[str | None] = ContextVar("georoute_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Gives each record a `request_id`: the one it was logged with (`extra=`), else the
    request being served, else None. Installed on the daemon's log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id.get()
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            return line
        # A request id is printable ASCII without spaces (protocol/fields.py): it cannot
        # break the line. On a traceback's first line, where a reader looks.
        first, newline, rest = line.partition("\n")
        return f"{first} request_id={request_id}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:  # an internal error's traceback, found by its reference
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)
