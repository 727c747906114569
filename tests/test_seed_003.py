"""Seed 003 as examples (src/aegis_demo/realtime/): its ``/chat/stream`` token stream stores the
answer when the stream ends, and what was sent when the client leaves mid-stream; its
posts with comments load with ``selectinload``, and the lazy-load mistake raises our error.

Over a real uvicorn server and a real streaming client, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from aegis_demo.realtime import app as realtime
from aegis_demo.realtime.models import ChatAnswer, Comment, Post, RealtimeBase
from aegis_shared.database import DatabaseManager
from aegis_shared.errors.exceptions import RelationshipNotLoadedError
from tests.conftest import MakeDb
from tests.http import serve
from tests.waiting import until

TIMEOUT = 10
on_sqlite_and_postgres = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
async def rdb(make_db: MakeDb) -> DatabaseManager:
    return await make_db(RealtimeBase.metadata, pool_size=5, max_overflow=10)


async def answers(db: DatabaseManager) -> list[tuple[str, str, bool]]:
    async with db.session() as session:
        rows = await session.scalars(select(ChatAnswer).order_by(ChatAnswer.id))
        return [(a.question, a.answer, a.complete) for a in rows]


def idle(db: DatabaseManager) -> bool:
    status = db.pool_status()
    return status["main"]["checked_out"] == 0 and status["background"]["checked_out"] == 0


@on_sqlite_and_postgres
async def test_003_chat_stream_sends_tokens_then_stores_the_answer(
    rdb: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(realtime, "TOKEN_DELAY", 0.001)
    expected = "입력하신 '안녕'에 대한 AI 답변입니다."
    async with (
        serve(realtime.create_app()) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        response = await client.get("/api/v1/chat/stream", params={"user_input": "안녕"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    tokens = [line.removeprefix("data: ") for line in response.text.split("\n") if line]
    assert tokens == [*expected, "[DONE]"]  # the seed's "data: {token}\n\n" format
    assert await answers(rdb) == [("안녕", expected, True)]
    assert idle(rdb)


@on_sqlite_and_postgres
async def test_003_disconnect_mid_stream_stores_what_was_sent_and_leaks_nothing(
    rdb: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(realtime, "TOKEN_DELAY", 0.05)
    tasks_before = len(asyncio.all_tasks())
    async with (
        serve(realtime.create_app()) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        received: list[str] = []
        async with client.stream(
            "GET", "/api/v1/chat/stream", params={"user_input": "hi"}
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    received.append(line.removeprefix("data: "))
                if len(received) == 5:
                    break  # leaves the block: the connection is closed mid-answer

        async def stored() -> bool:
            return bool(await answers(rdb))

        await until(stored)
    ((question, answer, complete),) = await answers(rdb)
    assert (question, complete) == ("hi", False)
    # What was sent: what the client read, and at most the tokens already on the wire.
    assert answer.startswith("".join(received))
    assert len(answer) < len("입력하신 'hi'에 대한 AI 답변입니다.")
    assert idle(rdb)
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= tasks_before  # no task of the stream left behind


async def add_post(db: DatabaseManager) -> int:
    async with db.session() as session:
        post = Post(title="hello", comments=[Comment(body="first"), Comment(body="second")])
        session.add(post)
        await session.commit()
        return post.id


@on_sqlite_and_postgres
async def test_003_get_post_with_comments_loads_them_with_selectinload(
    rdb: DatabaseManager,
) -> None:
    post_id = await add_post(rdb)
    async with (
        serve(realtime.create_app()) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        found = await client.get(f"/api/v1/posts/{post_id}")
        missing = await client.get(f"/api/v1/posts/{post_id + 1}")
    assert found.status_code == 200
    body = found.json()
    assert body["title"] == "hello"
    assert [c["body"] for c in body["comments"]] == ["first", "second"]
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert idle(rdb)


@on_sqlite_and_postgres
async def test_003_lazy_load_after_get_raises_our_error_and_the_fix_works(
    rdb: DatabaseManager,
) -> None:
    post_id = await add_post(rdb)
    # 수정 전 (에러 발생)
    async with rdb.session() as db:
        post = await db.get(Post, post_id)
        assert post is not None
        with pytest.raises(RelationshipNotLoadedError, match="selectinload") as caught:
            print(post.comments)
        assert isinstance(caught.value, AttributeError)

    # 수정 후 (정상 작동)
    async with rdb.session() as db:
        stmt = select(Post).where(Post.id == post_id).options(selectinload(Post.comments))
        result = await db.execute(stmt)
        post_data = result.scalar_one()
    print(post_data.comments)  # 이미 메모리에 로드되어 있으므로 OK!
    assert [c.body for c in post_data.comments] == ["first", "second"]
