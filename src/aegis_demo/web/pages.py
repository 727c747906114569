"""The server-rendered pages (Jinja2): home, the fridge, the posts, the chat and the
operator panel. Each page gets response models or plain values, never ORM rows, so only
the declared fields of the database reach it; Jinja2 escapes every value.

The pages' script (``/static/app.js``) changes state only through the JSON endpoints,
sending the CSRF token of the page's ``<meta name="csrf-token">`` in ``X-CSRF-Token``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from aegis_demo.fridge.app import channel_of
from aegis_demo.fridge.service import FridgeService, FridgeUnitOfWork
from aegis_demo.posts import list_posts
from aegis_demo.web.operator import CurrentSession, is_operator
from aegis_shared.database import get_session
from aegis_shared.errors.exceptions import DatabaseError
from aegis_shared.web import HttpSession, csrf_token

__all__ = ["install_error_pages", "page_router", "static_directory", "templates"]

templates = Jinja2Templates(directory=Path(str(files("aegis_demo") / "templates")))

#: What an error page says: fixed texts, never an exception's or the database's.
_ERROR_TEXTS = {
    403: "This page is not open to you.",
    404: "There is no page here.",
    405: "This page does not take that kind of request.",
    500: "Something went wrong on our side; the details are in the server's log.",
    503: "The service is busy or its database is unavailable; try again shortly.",
    504: "The request took too long and was cancelled; try again shortly.",
}


def static_directory() -> Path:
    """The pages' script, stylesheet and icon, shipped in the package."""
    return Path(str(files("aegis_demo") / "static"))


def _wants_page(request: Request) -> bool:
    """A browser navigating (``Accept: text/html``), not a script or an API client."""
    return "text/html" in request.headers.get("accept", "")


def _error_page(request: Request, status: int, headers: Mapping[str, str] | None) -> Response:
    context = {
        "status": status,
        "message": _ERROR_TEXTS.get(status, "The request could not be completed."),
        "user": None,
        "operator": False,
        "csrf": csrf_token(request),
        "page": "error",
    }
    return templates.TemplateResponse(
        request, "error.html", context, status_code=status, headers=headers
    )


def install_error_pages(app: FastAPI) -> None:
    """Errors as a small page for a browser's navigation, with fixed texts: an
    ``HTTPException`` (else FastAPI's JSON) and a data-layer error (else the library's
    JSON body; its handler still logs the error and sets ``Retry-After``), and anything
    else as a 500 with a fixed text. Call it after ``install_error_handlers``."""
    json_database_error = app.exception_handlers[DatabaseError]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not _wants_page(request):
            return await http_exception_handler(request, exc)
        return _error_page(request, exc.status_code, exc.headers)

    async def database_error(request: Request, exc: Exception) -> Response:
        answer = json_database_error(request, exc)  # logs it, for the operator
        if inspect.isawaitable(answer):
            answer = await answer
        if not _wants_page(request):
            return answer
        retry = answer.headers.get("retry-after")
        return _error_page(request, answer.status_code, {"Retry-After": retry} if retry else None)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the exception with its traceback; the client gets a fixed text.
        if not _wants_page(request):
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        return _error_page(request, 500, None)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DatabaseError, database_error)
    app.add_exception_handler(Exception, unexpected)


def render(
    request: Request, session: HttpSession, name: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """``name`` with what every page shows: the visitor's name, the operator mark and the
    CSRF token for the page's script."""
    context |= {
        "user": session.get("user") if session.key else None,
        "operator": bool(session.key) and is_operator(session),
        "csrf": csrf_token(request),
        "page": name.removesuffix(".html"),
    }
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def page_router() -> APIRouter:
    """The HTML pages (left out of the API schema)."""
    router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

    @router.get("/")
    async def home(request: Request, session: CurrentSession) -> HTMLResponse:
        """What this is, and where to look."""
        return render(request, session, "home.html")

    @router.get("/my-fridge")
    async def fridge_page(request: Request, session: CurrentSession) -> HTMLResponse:
        """The visitor's fridge, live. The session starts here, so that the page can
        follow ``/fridge/events`` at once (another tab of the same visitor shares it)."""
        key = await session.ensure()
        channel_of(session)
        async with FridgeUnitOfWork(read_only=True) as uow:
            catalogue = await uow.ingredients.list(order_by="id", limit=500)
        rows = await FridgeService.get_session_ingredients(key)
        return render(
            request,
            session,
            "fridge.html",
            catalogue=[{"id": i.id, "name": i.name, "category": i.category} for i in catalogue],
            fridge=[row.ingredient_id for row in rows],
        )

    @router.get("/posts")
    async def posts_page(
        request: Request,
        session: CurrentSession,
        db_session: Annotated[AsyncSession, Depends(get_session)],
    ) -> HTMLResponse:
        """The posts with their comments (one ``selectinload``)."""
        return render(request, session, "posts.html", posts=await list_posts(db_session))

    @router.get("/chat")
    async def chat_page(request: Request, session: CurrentSession) -> HTMLResponse:
        """Ask, and watch the answer stream in token by token."""
        return render(request, session, "chat.html")

    @router.get("/operator")
    async def operator_page(request: Request, session: CurrentSession) -> HTMLResponse:
        """The operator panel (or its sign-in form)."""
        return render(request, session, "operator.html")

    return router
