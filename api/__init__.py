"""The REST facade (/api/v1): `create_app(client, settings)` gives a Starlette application
over an open `client.Client`. It reaches data only through the client library and the
router. `api.domain` holds the operations as plain async Python; `api.http` the routes."""

from api.http import create_app
from api.settings import Settings

__all__ = ["Settings", "create_app"]
