"""The test-only fault points of two-phase commit are named exactly, or the router refuses
to start: a typo must not silently test nothing."""

from __future__ import annotations

import pytest

from router.engine.twophase import FAULT_ENV, FaultPoint, fault_point_from_env
from router.errors import ConfigError


def test_no_fault_point_unless_named() -> None:
    assert fault_point_from_env({}) is None
    assert fault_point_from_env({FAULT_ENV: ""}) is None


@pytest.mark.parametrize("point", list(FaultPoint))
def test_each_fault_point_by_its_name(point: FaultPoint) -> None:
    assert fault_point_from_env({FAULT_ENV: point.value}) is point


def test_an_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="after_prepare, after_decision"):
        fault_point_from_env({FAULT_ENV: "after_prepared"})
