"""Seed 003 as an app: the ``/chat/stream`` token stream and posts with their comments.

The endpoints are the seed's, adapted in three places:

- ``stream_ai_response`` answers with FastAPI's own ``fastapi.sse`` (the seed wrote the
  ``data:`` lines by hand into a ``StreamingResponse``; the wire format is the same) and
  stores the answer through :class:`BackgroundUnitOfWork` when the stream ends, also when
  the client leaves mid-answer (then what was sent so far, ``complete=False``). The store
  runs on the background pool in the generator's ``finally``: a short transaction after
  the last token, never a connection held while tokens go out.
- ``get_async_db`` is the seed's name for our ``get_session``.
- ``get_post_with_comments`` returns a response model rather than the ORM row, so that
  nothing but the declared fields of the database reaches the client.

``create_app()`` serves ``router`` with our error handlers, on the default manager
(``configure_database(...)`` first, as for any app).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from aegis_demo.realtime.models import ChatAnswerRepository, Post
from aegis_shared.database import BackgroundUnitOfWork, get_session
from aegis_shared.errors.exceptions import EntityNotFoundError
from aegis_shared.web.errors import install_error_handlers

#: The seed's dependency name for the request's session.
get_async_db = get_session

#: Seconds between tokens (the seed's 0.05; tests make it shorter or longer).
TOKEN_DELAY = 0.05

router = APIRouter(prefix="/api/v1", tags=["Real-time & Async"])


class ChatUnitOfWork(BackgroundUnitOfWork):
    """Stores chat answers on the background pool, away from request traffic."""

    chat_answers: ChatAnswerRepository


async def store_answer(question: str, answer: str, *, complete: bool) -> None:
    """Store what the stream sent for ``question`` (one short transaction)."""
    async with ChatUnitOfWork() as uow:
        await uow.chat_answers.create(
            {"question": question, "answer": answer, "complete": complete}
        )
        await uow.commit()


@router.get("/chat/stream", response_class=EventSourceResponse)
async def stream_ai_response(user_input: str) -> AsyncIterator[ServerSentEvent]:
    """
    AI 답변을 한 글자씩 실시간으로 전송하는 SSE 엔드포인트
    """
    sent: list[str] = []
    complete = False
    try:
        async for token in token_generator(user_input):
            sent.append(token)
            yield ServerSentEvent(raw_data=token)
        yield ServerSentEvent(raw_data="[DONE]")
        complete = True
    finally:
        # Shielded: when the client leaves, this generator is cancelled, and the store of
        # what was sent must still finish (it takes and returns one background connection).
        await asyncio.shield(store_answer(user_input, "".join(sent), complete=complete))


async def token_generator(user_input: str) -> AsyncIterator[str]:
    """The seed's mock answer, one character at a time."""
    mock_response = f"입력하신 '{user_input}'에 대한 AI 답변입니다."
    for token in mock_response:
        yield token
        await asyncio.sleep(TOKEN_DELAY)


class CommentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    body: str


class PostOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    title: str
    comments: list[CommentOut]


@router.get("/posts/{post_id}", response_model=PostOut)
async def get_post_with_comments(
    post_id: int,
    db_session: AsyncSession = Depends(get_async_db),  # noqa: B008 (the seed's style)
) -> Post:
    """
    비동기 DB 세션을 사용하여 게시글과 댓글을 즉시 로딩(Eager Loading)으로 조회
    """
    query_stmt = select(Post).where(Post.id == post_id).options(selectinload(Post.comments))
    result = await db_session.execute(query_stmt)
    target_post = result.scalar_one_or_none()
    if target_post is None:
        # The seed returned None (a 200 with "null"); a missing post is our 404.
        raise EntityNotFoundError("Post", post_id)
    return target_post


def create_app() -> FastAPI:
    """The example app with our safe error handlers."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    return app
