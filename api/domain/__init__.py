"""The e-learning platform's operations as plain async Python over the client library, with no
HTTP in sight: `domain = Domain(db, settings)`, then for example
`await domain.courses.publish(course_id, by=instructor)`. Every call names who makes it (a
Principal) and is refused with an api.errors exception when that caller may not."""

from __future__ import annotations

import client
from api.domain.analytics import Analytics
from api.domain.auth import Auth
from api.domain.content import Content
from api.domain.courses import Courses
from api.domain.data import Data
from api.domain.enrollments import Enrollments
from api.domain.health import HealthCheck
from api.domain.passwords import Passwords
from api.domain.payments import Payments
from api.domain.reviews import Reviews
from api.domain.tokens import TokenIssuer
from api.domain.users import Users
from api.settings import Settings

__all__ = ["Domain"]


class Domain:
    def __init__(self, db: client.Client, settings: Settings, *,
                 passwords: Passwords | None = None, tokens: TokenIssuer | None = None) -> None:
        data = Data(db)
        self.data = data
        self.tokens = tokens or TokenIssuer(
            settings.jwt_secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
            ttl_seconds=settings.access_ttl_seconds)
        self.auth = Auth(data, passwords or Passwords(), self.tokens,
                         settings.refresh_ttl_seconds)
        self.users = Users(data)
        self.courses = Courses(data)
        self.enrollments = Enrollments(data)
        self.payments = Payments(data, self.enrollments)
        self.reviews = Reviews(data)
        self.analytics = Analytics(data, self.courses)
        self.content = Content(data)
        self.health = HealthCheck(data, settings.metrics_url)
