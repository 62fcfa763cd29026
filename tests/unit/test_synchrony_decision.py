"""When a synchronous shard's primary replicates synchronously again (router/ha/synchrony.py):
only the writable primary, only when nothing is set (the promoter's off; an operator's own
value is theirs), and only once a standby streams (with none, every write would wait)."""

from __future__ import annotations

import pytest

from router.ha.synchrony import should_turn_off, should_turn_on


@pytest.mark.parametrize(("in_recovery", "names", "streaming", "on"), [
    (False, "", 1, True),
    (False, "  ", 2, True),
    (False, "", 0, False),           # no standby streams: writes would all wait
    (True, "", 1, False),            # a standby (a stale view of the primary)
    (False, "*", 1, False),          # on already
    (False, "FIRST 1 (a, b)", 1, False),  # an operator's own setting
])
def test_synchronous_again_only_on_a_writable_primary_with_a_streaming_standby(
        in_recovery: bool, names: str, streaming: int, on: bool) -> None:
    assert should_turn_on(in_recovery, names, streaming) is on


@pytest.mark.parametrize(("in_recovery", "names", "streaming", "new", "off"), [
    (False, "*", 0, True, True),     # a new primary as pg_promote left it: off, for now
    (False, "*", 0, False, False),   # the same primary lost its standby: writes wait (promise)
    (False, "*", 1, True, False),    # a standby streams already: stays on
    (False, "", 0, True, False),     # the promoter turned it off already
    (False, "FIRST 1 (a)", 0, True, False),  # an operator's own value
    (True, "*", 0, True, False),     # still a standby (a stale view)
])
def test_asynchronous_on_a_new_primary_only_as_the_promoter_leaves_it(
        in_recovery: bool, names: str, streaming: int, new: bool, off: bool) -> None:
    assert should_turn_off(in_recovery, names, streaming, new) is off
