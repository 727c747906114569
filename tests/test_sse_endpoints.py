"""SSE endpoints on ``fastapi.sse`` that check before they stream, and what each dependency
scope does to the session and its pooled connection while the stream runs.

Over a real uvicorn server and a real streaming client. The generators wait on events the
test sets, so the pool is looked at while a stream is open and idle, not after it ended.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.sse import EventSourceResponse
from sqlalchemy import func, select, text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_shared.database import DatabaseManager, get_session
from aegis_shared.web.errors import install_error_handlers
from tests.http import serve
from tests.models import Comment, Post, PostRepository, User

TIMEOUT = 10


def checked_out(db: DatabaseManager) -> int:
    return db.pool_status()["main"]["checked_out"]


async def until(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (polls plain attributes)
            await asyncio.sleep(0.01)


async def messages(lines: AsyncIterator[str]) -> AsyncIterator[Any]:
    """The decoded ``data`` of each SSE message off one response's ``aiter_lines()``."""
    data: list[str] = []
    async for line in lines:
        if line == "" and data:
            yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


async def next_message(stream: AsyncIterator[Any]) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await anext(stream)


async def seed_posts(db: DatabaseManager) -> tuple[int, int]:
    """A public post with two comments and a private one; their ids."""
    async with db.session() as session:
        author = User(email="a@example.com", name="A")
        public = Post(author=author, title="hello", comments=[Comment(body="1"), Comment(body="2")])
        private = Post(author=author, title="private: drafts")
        session.add_all([public, private])
        await session.commit()
        return public.id, private.id


# -- the recommended pattern: check in a dependency, one short session per event --------------


async def visible_post(
    post_id: int,
    session: Annotated[AsyncSession, Depends(get_session, scope="function")],
) -> int:
    """The check of the streaming endpoint. A dependency, so it runs before the response
    starts: a missing post is our EntityNotFoundError (404 through the error handlers), a
    private one a 403. A plain ``async def`` taking the function-scoped session, so that
    session ends when the endpoint returns, not when the stream does."""
    post = await PostRepository(session).get_one(post_id)
    if post.title.startswith("private"):
        raise HTTPException(status_code=403, detail="This post is private; ask its author.")
    return post.id


def make_app(db: DatabaseManager, ticks: list[asyncio.Event]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/posts/{post_id}/comments/count", response_class=EventSourceResponse)
    async def comment_count(post_id: Annotated[int, Depends(visible_post)]) -> AsyncIterator[Any]:
        for tick in ticks:
            # Per event: take a connection, give it back before yielding.
            async with db.session() as session:
                count = await session.scalar(
                    select(func.count()).select_from(Comment).where(Comment.post_id == post_id)
                )
            yield {"comments": count}
            await tick.wait()

    @app.get("/late-check", response_class=EventSourceResponse)
    async def late_check() -> AsyncIterator[Any]:
        # The mistake: a check inside the generator runs after the 200 has gone out.
        raise HTTPException(status_code=403, detail="too late")
        yield  # pragma: no cover (makes this a generator endpoint)

    return app


async def test_checks_in_a_dependency_answer_403_and_404_before_the_stream(
    db: DatabaseManager,
) -> None:
    public, private = await seed_posts(db)
    ticks = [asyncio.Event() for _ in range(3)]
    async with (
        serve(make_app(db, ticks)) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        missing = await client.get(f"/posts/{private + 100}/comments/count")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/json"
        assert missing.json()["error"] == "not_found"
        forbidden = await client.get(f"/posts/{private}/comments/count")
        assert forbidden.status_code == 403
        assert forbidden.json() == {"detail": "This post is private; ask its author."}
        assert checked_out(db) == 0

        async with client.stream("GET", f"/posts/{public}/comments/count") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = messages(response.aiter_lines())
            assert await next_message(stream) == {"comments": 2}
            # The check's session ends as the stream starts; from then on an idle stream
            # holds no pooled connection.
            await until(lambda: checked_out(db) == 0)
            async with db.session() as session:
                session.add(Comment(post_id=public, body="3"))
                await session.commit()
            ticks[0].set()
            assert await next_message(stream) == {"comments": 3}
            assert checked_out(db) == 0
            for tick in ticks:
                tick.set()
            assert await next_message(stream) == {"comments": 3}
        await until(lambda: checked_out(db) == 0)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_check_inside_the_generator_cannot_change_the_status(
    db: DatabaseManager,
) -> None:
    async with (
        serve(make_app(db, [])) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        try:
            response = await client.get("/late-check")
        except httpx.RemoteProtocolError:
            pass  # the server broke the chunked body off: the client saw no status change
        else:
            assert response.status_code == 200
            assert "too late" not in response.text


# -- each dependency scope inside a generator endpoint --------------------------------------


async def default_scope_check(
    session: Annotated[AsyncSession, Depends(get_session)],
) -> AsyncSession:
    """A check that hands its (default-scope) session on to the endpoint."""
    await session.execute(text("SELECT 1"))
    return session


async def yield_check(
    session: Annotated[AsyncSession, Depends(get_session, scope="function")],
) -> AsyncIterator[AsyncSession]:
    yield session  # pragma: no cover (FastAPI refuses the route)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_function_scope_session_is_closed_inside_the_generator(
    db: DatabaseManager,
) -> None:
    seen: dict[str, Any] = {}
    release = asyncio.Event()
    app = FastAPI()

    @app.get("/s", response_class=EventSourceResponse)
    async def endpoint(
        session: Annotated[AsyncSession, Depends(get_session, scope="function")],
    ) -> AsyncIterator[Any]:
        try:
            await session.execute(text("SELECT 1"))
        except InvalidRequestError as exc:
            seen["error"] = str(exc)
        yield {"checked_out": checked_out(db)}
        await release.wait()

    async with (
        serve(app) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
        client.stream("GET", "/s") as response,
    ):
        stream = messages(response.aiter_lines())
        assert await next_message(stream) == {"checked_out": 0}
        assert checked_out(db) == 0  # nothing held while the stream is open
        release.set()
    assert "permanently closed" in seen["error"]


async def test_default_scope_sub_dependency_pins_a_connection_for_the_whole_stream(
    db: DatabaseManager,
) -> None:
    seen: dict[str, Any] = {}
    release = asyncio.Event()
    app = FastAPI()

    @app.get("/s", response_class=EventSourceResponse)
    async def endpoint(
        session: Annotated[AsyncSession, Depends(default_scope_check)],
    ) -> AsyncIterator[Any]:
        seen["usable"] = (await session.scalar(text("SELECT 1"))) == 1
        yield {"in_transaction": session.in_transaction()}
        await release.wait()

    async with (
        serve(app) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        async with client.stream("GET", "/s") as response:
            stream = messages(response.aiter_lines())
            assert await next_message(stream) == {"in_transaction": True}
            await asyncio.sleep(0.2)  # idle: still held
            assert checked_out(db) == 1
            release.set()
        await until(lambda: checked_out(db) == 0)  # given back only when the stream ended
    assert seen["usable"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_function_scope_inside_a_yield_dependency_is_refused(db: DatabaseManager) -> None:
    from fastapi.exceptions import DependencyScopeError

    app = FastAPI()
    with pytest.raises(DependencyScopeError, match="cannot depend on dependencies with scope"):

        @app.get("/s", response_class=EventSourceResponse)
        async def endpoint(  # pragma: no cover
            session: Annotated[AsyncSession, Depends(yield_check)],
        ) -> AsyncIterator[Any]:
            yield {}
