"""Which of the router's backend connections are dead although no error says so (pure).

A link can go half-open: a middlebox loses the connection's state, a proxy or a host keeps
acknowledging bytes while nothing reaches the server, or the server's session ended and its
reset never arrived. TCP keepalives and TCP_USER_TIMEOUT cannot tell such a link from a live
one (the bytes are acknowledged), so the requests on it would wait for ever, and new ones
would queue up behind them. A statement that runs for minutes looks the same from the
router's side: no reply yet. Only the server can tell them apart, so the router asks it, on
a new connection, about the sessions of its own connections (`pg_stat_activity`), and a
connection is lost when

- its server session is gone (the server ended it: the router's side never heard), or
- it has waited `bound` seconds for a reply while its server session has sat idle for as
  long: the server is waiting for the router, which is waiting for the server, so the
  request or its reply was lost on the way.

A session still running the statement (or in any state but idle) is alive, however long it
takes: the statement's own timeouts govern it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SESSIONS_SQL", "ServerSession", "lost_sessions"]

# Asked on a new connection to the node: the sessions among the router's connections' pids.
SESSIONS_SQL = (
    "SELECT pid, state, extract(epoch FROM clock_timestamp() - state_change)::float8 "
    "FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1::int4[])"
)


@dataclass(frozen=True, slots=True)
class ServerSession:
    """A row of pg_stat_activity: the server process and what it has done for how long."""

    pid: int
    state: str | None  # 'active', 'idle', 'idle in transaction', ... (None: not visible)
    seconds_in_state: float | None


def lost_sessions(ours: Mapping[int, float | None], seen: Mapping[int, ServerSession],
                  bound: float) -> dict[int, str]:
    """The pids among `ours` whose connections are lost, each with why. `ours` maps each of
    the router's connections (by its server pid) to how long it has waited for a reply
    (None: nothing in flight, or not known); `seen` is what the server reported."""
    lost: dict[int, str] = {}
    for pid, waited in ours.items():
        session = seen.get(pid)
        if session is None:
            lost[pid] = "its server session is gone"
        elif (waited is not None and waited >= bound and session.state == "idle"
              and session.seconds_in_state is not None
              and session.seconds_in_state >= bound):
            lost[pid] = (f"no reply for {waited:.1f}s while the server has waited "
                         f"{session.seconds_in_state:.1f}s for the next request: the request "
                         "or its reply was lost on the way")
    return lost
