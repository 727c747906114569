"""``/docs`` without internet: Swagger UI's JavaScript and CSS served from the
``fastapi-offline`` package (Swagger UI 5, which reads OpenAPI 3.1), never from a CDN.

The page FastAPI's ``get_swagger_ui_html`` writes starts Swagger UI in one inline script;
the page's Content-Security-Policy allows exactly that script, by its SHA-256, and no other.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

__all__ = ["ASSETS_URL", "install_docs"]

#: Where the Swagger UI files are served.
ASSETS_URL = "/docs-assets"

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _assets() -> Path:
    """The directory of Swagger UI's files in the installed ``fastapi-offline``."""
    return Path(str(files("fastapi_offline") / "static"))


def _policy(html: str) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    # Swagger UI sets style attributes from its script, hence 'unsafe-inline' for styles
    # (never for scripts).
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def install_docs(app: FastAPI, *, favicon_url: str) -> None:
    """Serve ``/docs`` (Swagger UI, offline) on ``app``, which must be made with
    ``docs_url=None``."""
    if app.docs_url is not None:
        raise ValueError(
            "install_docs() serves /docs itself: make the app with FastAPI(docs_url=None)"
        )
    app.mount(ASSETS_URL, StaticFiles(directory=_assets()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=favicon_url,
            # The validator badge would load an image from swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        html = bytes(page.body).decode()
        page.headers["Content-Security-Policy"] = _policy(html)
        return page
