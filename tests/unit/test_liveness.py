"""router/core/liveness.py: which backend connections are lost although no error came."""

from __future__ import annotations

from router.core.liveness import ServerSession, lost_sessions

BOUND = 3.0


def test_a_connection_whose_server_session_is_gone_is_lost_busy_or_not() -> None:
    lost = lost_sessions({101: 0.5, 102: None}, {}, BOUND)
    assert set(lost) == {101, 102}
    assert all("gone" in why for why in lost.values())


def test_a_long_statement_still_running_is_alive_however_long_it_waits() -> None:
    seen = {7: ServerSession(7, "active", 600.0)}
    assert lost_sessions({7: 600.0}, seen, BOUND) == {}


def test_waiting_past_the_bound_on_a_server_that_waits_too_is_lost() -> None:
    seen = {7: ServerSession(7, "idle", 4.0)}
    lost = lost_sessions({7: 3.5}, seen, BOUND)
    assert list(lost) == [7] and "lost on the way" in lost[7]


def test_an_idle_session_is_alive_below_the_bound_on_either_side() -> None:
    # The reply may still be on its way (we waited little), or the server went idle a
    # moment ago (it answered just now and the reply is in flight).
    assert lost_sessions({7: 1.0}, {7: ServerSession(7, "idle", 60.0)}, BOUND) == {}
    assert lost_sessions({7: 60.0}, {7: ServerSession(7, "idle", 0.2)}, BOUND) == {}


def test_nothing_in_flight_on_a_live_session_is_alive() -> None:
    seen = {7: ServerSession(7, "idle", 900.0), 8: ServerSession(8, "idle in transaction", 5.0)}
    assert lost_sessions({7: None, 8: None}, seen, BOUND) == {}


def test_a_state_the_server_does_not_show_is_not_judged_idle() -> None:
    seen = {7: ServerSession(7, None, None)}
    assert lost_sessions({7: 30.0}, seen, BOUND) == {}
