"""Read-your-writes tokens. A write reply carries `ryw_token` = "<shard>:<lsn>" (lsn as a
decimal integer, the primary's WAL position after the write); the client keeps the highest LSN
per shard and sends the map {shard: lsn} in the `ryw` hint of later requests."""

from __future__ import annotations

__all__ = ["format_ryw_token", "merge_ryw_token", "parse_ryw_token"]


def format_ryw_token(shard: str, lsn: int) -> str:
    return f"{shard}:{lsn}"


def parse_ryw_token(token: str) -> tuple[str, int]:
    """Parse "<shard>:<lsn>" into (shard, lsn); ValueError if malformed."""
    shard, sep, lsn_text = token.rpartition(":")
    if not sep or not shard or not lsn_text.isdigit():
        raise ValueError(f"malformed ryw token {token!r}")
    return shard, int(lsn_text)


def merge_ryw_token(state: dict[str, int], token: str | None) -> None:
    """Fold a reply's token into a session's {shard: lsn} map, keeping the maximum."""
    if not token:
        return
    try:
        shard, lsn = parse_ryw_token(token)
    except ValueError:
        return  # a token we cannot read must not break the reply it came with
    if lsn > state.get(shard, -1):
        state[shard] = lsn
