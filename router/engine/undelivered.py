"""A statement that may have written ran, but its reply cannot be sent (a value with no wire
form, a reply over router.max_frame_bytes): the client must learn that it applied, with its
status and read-your-writes token, never read it as a failure that changed nothing."""

from __future__ import annotations

from typing import Any

__all__ = ["ResultUndeliverable", "rowcount_of"]


def rowcount_of(status: str, rows: list[Any]) -> int:
    """The rows a command tag counts ("INSERT 0 3" -> 3), else the rows returned."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else len(rows)


class ResultUndeliverable(Exception):
    """Outside a transaction the write is committed; inside one (`tx`), the statement ran in
    it and commits or rolls back with it. `reason` says why its reply cannot be sent."""

    def __init__(self, status: str, rowcount: int, route: list[str] | None,
                 ryw_token: str | None, tx: int | None, reason: str) -> None:  # fmt: skip
        self.status = status
        self.rowcount = rowcount
        self.route = route
        self.ryw_token = ryw_token
        self.tx = tx
        self.reason = reason
        if tx is None:
            what = f"the statement ran and was committed ({status}), but its result cannot be sent"
            advice = "do not send it again"
        else:
            what = (f"the statement ran in transaction {tx} ({status}), which is still open, "
                    "but its result cannot be sent")  # fmt: skip
            advice = "it commits or rolls back with the transaction"
        super().__init__(f"{what}: {reason}; {advice}")

    def detail(self) -> dict[str, Any]:
        """The Error reply's detail (PROTOCOL.md, section 3)."""
        detail: dict[str, Any] = {
            "outcome": "applied",
            "status": self.status,
            "rowcount": self.rowcount,
            "ryw_token": self.ryw_token,
            "route": self.route,
        }
        if self.tx is not None:
            detail["tx"] = self.tx
        return detail
