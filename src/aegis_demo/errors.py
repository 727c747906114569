"""The error answers the application's own endpoints document (``responses=``).

The data layer's errors (404 ``not_found``, 409, 503, 504, 500) and the CSRF check's 403
are documented on every operation by ``install_error_handlers`` with the library's
``DatabaseErrorBody``; what the endpoints raise themselves (``HTTPException``) has
FastAPI's body, :class:`HTTPErrorBody`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["HTTPErrorBody", "errors"]


class HTTPErrorBody(BaseModel):
    """The body of an ``HTTPException``: what happened and what to do, for people."""

    detail: str = Field(description="What happened and what to do next.")


_NAME = HTTPErrorBody.__name__


def errors(*answers: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for FastAPI: each ``(status, description)`` with :class:`HTTPErrorBody`
    as ``application/json``, also on a streaming endpoint (whose own media type FastAPI
    would give the model: its errors are JSON all the same)."""
    json_body = {"application/json": {"schema": {"$ref": f"#/components/schemas/{_NAME}"}}}
    return {
        status: {"model": HTTPErrorBody, "description": text, "content": json_body}
        for status, text in answers
    }
