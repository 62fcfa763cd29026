"""When a synchronous shard's primary replicates synchronously again (router/ha/synchrony.py):
only the writable primary, only when nothing is set (the promoter's off; an operator's own
value is theirs), and only once a standby streams (with none, every write would wait)."""

from __future__ import annotations

import pytest

from router.ha.synchrony import should_turn_on


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
