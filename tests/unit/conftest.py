"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from router.backend import pgrows, pgwire
from tests.support.ci import missing


@pytest.fixture(params=["c", "python"])
def row_decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The pipelined connections read their rows with each DataRow decoder in turn: the
    compiled one (router/backend/_rowdecode.c) and the same in Python (pgrows.py)."""
    if request.param == "c":
        try:
            decode = pgrows.compiled_decoder()
        except ImportError as exc:
            missing(f"the compiled row decoder is not built ({exc}): make venv builds it")
    else:
        decode = pgrows.decode_rows_python
    monkeypatch.setattr(pgwire, "_decode_rows", decode)
    return str(request.param)
