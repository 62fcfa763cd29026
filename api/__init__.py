"""The REST facade (/api/v1, JWT, rate limiting) over client/. Not built yet: it is the next
planned piece after the router core (see README, "What is coming")."""

__all__: list[str] = []
