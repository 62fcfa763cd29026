"""External failover mode: following the node that says it is no standby, with hysteresis,
and never while the current primary is writable too (split brain)."""

from __future__ import annotations

from router.ha.discovery import Follow, NodeObservation, PrimaryWatch, Stay, StayReason

P, R1, R2 = "europe-1", "europe-2", "europe-3"


def obs(primary: bool | None, r1: bool | None, r2: bool | None = True) -> list[NodeObservation]:
    return [NodeObservation(P, primary), NodeObservation(R1, r1), NodeObservation(R2, r2)]


def stays(decision: Follow | Stay, reason: StayReason) -> None:
    assert isinstance(decision, Stay), decision
    assert decision.reason is reason, decision


def test_follows_a_promoted_replica_after_confirm_rounds() -> None:
    watch = PrimaryWatch("europe", confirm_rounds=3)
    stays(watch.observe(P, obs(False, True)), StayReason.PRIMARY_WRITABLE)
    stays(watch.observe(P, obs(None, False)), StayReason.NOT_CONFIRMED)  # primary gone
    stays(watch.observe(P, obs(None, False)), StayReason.NOT_CONFIRMED)
    decision = watch.observe(P, obs(None, False))
    assert isinstance(decision, Follow)
    assert (decision.old_primary, decision.new_primary) == (P, R1)
    assert "unreachable" in decision.detail
    # Afterwards the caller passes R1 as the primary: nothing more to do.
    stays(watch.observe(R1, obs(None, False)), StayReason.PRIMARY_WRITABLE)


def test_a_streak_broken_by_one_round_starts_again() -> None:
    watch = PrimaryWatch("europe", confirm_rounds=2)
    stays(watch.observe(P, obs(None, False)), StayReason.NOT_CONFIRMED)
    stays(watch.observe(P, obs(None, None)), StayReason.NO_CANDIDATE)  # R1 did not answer
    stays(watch.observe(P, obs(None, False)), StayReason.NOT_CONFIRMED)
    assert isinstance(watch.observe(P, obs(None, False)), Follow)


def test_the_old_primary_back_as_a_standby_is_followed_away_from() -> None:
    watch = PrimaryWatch("europe", confirm_rounds=1)
    decision = watch.observe(P, obs(True, False))
    assert isinstance(decision, Follow) and "a standby" in decision.detail


def test_split_brain_stays_put() -> None:
    watch = PrimaryWatch("europe", confirm_rounds=1)
    for _ in range(5):  # the old primary is still writable: never move
        stays(watch.observe(P, obs(False, False)), StayReason.SEVERAL_WRITABLE)
    stays(watch.observe(P, obs(None, False, False)), StayReason.SEVERAL_WRITABLE)
    stays(watch.observe(P, obs(None, True, True)), StayReason.NO_CANDIDATE)
