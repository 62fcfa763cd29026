"""Interactive docs at /docs: Swagger UI from the swagger-ui-bundle package's files, served by
the API itself (no CDN), pointed at /api/v1/openapi.json. The page runs no inline script and
asks Swagger UI not to call its online validator, so it works with no network."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["docs_routes"]

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>georoute API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

_INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "%s",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
};
"""

# Swagger UI sets inline styles; everything else comes from this server.
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")


def _assets() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def docs_routes(openapi_url: str) -> list[BaseRoute]:
    init = _INIT % openapi_url

    async def page(request: Request) -> Response:
        return HTMLResponse(_PAGE, headers={"Content-Security-Policy": _CSP})

    async def init_js(request: Request) -> Response:
        return Response(init, media_type="text/javascript")

    return [
        Route("/docs", page, methods=["GET"]),
        Route("/docs/init.js", init_js, methods=["GET"]),
        Mount("/docs/assets", app=StaticFiles(directory=_assets()), name="docs-assets"),
    ]
