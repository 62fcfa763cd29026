"""The one error the backup tools raise on their own behalf: a backup or restore that cannot be
done as asked, with the reason (and the log lines that say it, when a server said it)."""

from __future__ import annotations

from protocol.errors import ErrorCode
from router.errors import GeorouteError

__all__ = ["BackupError"]


class BackupError(GeorouteError):
    """A backup, verification, restore or prune could not be done; nothing was half-done
    silently (a partial backup directory is marked incomplete and deleted by the next prune)."""

    code = ErrorCode.INTERNAL  # an operator's tool: never a client's request
