"""tests/support/checker.py's judgement: what a writer was told against what the store holds.
The chaos tests trust it to say 0, so it must be seen to say more than 0 when it should."""

from __future__ import annotations

import client
from protocol import ErrorCode
from tests.support.checker import Attempt, Outcome, Report, judge, outcome_of

ACK, UNKNOWN, NOT = Outcome.ACKNOWLEDGED, Outcome.UNKNOWN, Outcome.NOT_APPLIED


def _judge(attempts: list[Attempt], found: dict[str, list[str]]) -> Report:
    return judge(Report("sql", 1, 1.0), attempts, found)


def test_a_clean_run_has_no_problems() -> None:
    report = _judge([Attempt("a", "europe", ACK), Attempt("b", "asia", NOT, "NODE_UNAVAILABLE"),
                     Attempt("c", "asia", UNKNOWN, "TIMEOUT!"),
                     Attempt("d", "asia", UNKNOWN, "TIMEOUT!")],
                    {"a": ["europe"], "c": ["asia"]})
    assert report.problems() == []
    assert (report.acknowledged, report.not_applied, report.unknown) == (1, 1, 2)
    assert (report.unknown_applied, report.unknown_not_applied) == (1, 1)


def test_each_kind_of_loss_is_counted_and_named() -> None:
    report = _judge([
        Attempt("lost", "europe", ACK),
        Attempt("twice", "europe", ACK),
        Attempt("moved", "europe", ACK),
        Attempt("lied", "asia", NOT, "POOL_EXHAUSTED"),
    ], {"twice": ["europe", "europe"], "moved": ["asia"], "lied": ["asia"],
        "ghost": ["asia"]})
    assert (report.lost, report.duplicated, report.misplaced) == (1, 1, 1)
    assert (report.false_failures, report.phantoms) == (1, 1)
    assert len(report.problems()) == 5
    try:
        report.assert_safe()
    except AssertionError as exc:
        assert "1 acknowledged writes missing" in str(exc)
    else:
        raise AssertionError("assert_safe passed a run that lost a write")


def test_read_your_writes_violations_are_a_problem() -> None:
    report = Report("sql", 1, 1.0, ryw_violations=2)
    assert report.problems() == ["2 read-your-writes violations"]


def test_what_an_error_tells_a_writer() -> None:
    def error(code: ErrorCode, retryable: bool) -> client.GeorouteError:
        return client.GeorouteError("x", code=code, retryable=retryable)

    assert outcome_of(error(ErrorCode.NODE_UNAVAILABLE, True)) is NOT  # nothing was sent
    assert outcome_of(error(ErrorCode.NODE_UNAVAILABLE, False)) is UNKNOWN  # lost after sending
    assert outcome_of(error(ErrorCode.TIMEOUT, False)) is UNKNOWN
    assert outcome_of(error(ErrorCode.INTERNAL, False)) is UNKNOWN
    assert outcome_of(client.ConnectionLostError("gone", retryable=False)) is UNKNOWN
    assert outcome_of(error(ErrorCode.POSTGRES_ERROR, False)) is NOT  # a refusal
    assert outcome_of(error(ErrorCode.POOL_EXHAUSTED, True)) is NOT
    assert outcome_of(client.ResultUndeliverableError("applied")) is ACK
    assert outcome_of(TimeoutError()) is UNKNOWN
    # Under a key, "retryable" says "safe to send again", not "nothing applied".
    assert outcome_of(error(ErrorCode.NODE_UNAVAILABLE, True), keyed=True) is UNKNOWN
    assert outcome_of(error(ErrorCode.POOL_EXHAUSTED, True), keyed=True) is NOT
