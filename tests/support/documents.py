"""Documents of the right shape for tests, with `changes` applied: one lesson's content and
one user's preferences (router/core/documents.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

__all__ = ["content", "preferences"]


def content(**changes: Any) -> dict[str, Any]:
    lesson = str(uuid.uuid4())
    doc: dict[str, Any] = {
        "_id": lesson, "lesson_id": lesson, "course_id": str(uuid.uuid4()), "region": "europe",
        "format": "quiz", "title": "Joins", "body": "Text", "video_url": None,
        "duration_seconds": 300,
        "attachments": [{"name": "slides.pdf", "url": "https://cdn.example.com/s.pdf"}],
        "quiz": [{"question": "2+2?", "choices": ["3", "4"], "answer": 1}],
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    doc.update(changes)
    return doc


def preferences(**changes: Any) -> dict[str, Any]:
    user = str(uuid.uuid4())
    doc: dict[str, Any] = {
        "_id": user, "user_id": user, "region": "asia", "language": "ja",
        "timezone": "Asia/Tokyo", "theme": "dark",
        "notifications": {"email": True, "push": False, "weekly_digest": True},
        "interests": ["python"], "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    doc.update(changes)
    return doc
