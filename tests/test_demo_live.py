"""The reference application's live fridge across two worker processes, on SQLite,
PostgreSQL and MariaDB: a visitor's page script (its CSRF token, its session cookie) adds
an ingredient through one process, and the visitor's other tab, following
``GET /fridge/events`` through the other process, sees it."""

from __future__ import annotations

import secrets
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from tests.conftest import MakeDb
from tests.demo import csrf_of
from tests.test_fridge_live import follow, worker

MILK, EGGS = 1, 2


async def test_an_ingredient_added_through_one_worker_shows_in_a_tab_on_the_other(
    make_db: MakeDb, db_url: URL, tmp_path: Path
) -> None:
    await make_db(MetaData(), default=False)  # an empty database: the app makes its own
    # Both processes sign the CSRF tokens with one key, as python -m aegis_demo sets it.
    shared = {"DEMO_CSRF_SECRET": secrets.token_urlsafe(32)}
    async with AsyncExitStack() as stack:
        one, two = [
            await stack.enter_async_context(
                worker(db_url, tmp_path / f"worker-{n}.log", "aegis_demo.app:app", **shared)
            )
            for n in (1, 2)
        ]
        async with httpx.AsyncClient(base_url=one) as tab_one:
            page = await tab_one.get("/my-fridge")
            assert page.status_code == 200
            headers = {"X-CSRF-Token": csrf_of(page.text), "Origin": one}
            body = {"ingredient_ids": [MILK]}
            first = await tab_one.post("/fridge/ingredients", json=body, headers=headers)
            assert first.status_code == 200, first.text
            # Cookies are per host, not per port: the other tab is the same visitor.
            async with (
                httpx.AsyncClient(base_url=two, cookies=tab_one.cookies) as tab_two,
                follow(tab_two) as stream,
            ):
                _, snapshot = await stream.next()
                assert [i["name"] for i in snapshot.data["ingredients"]] == ["milk"]
                body = {"ingredient_ids": [EGGS]}
                added = await tab_one.post("/fridge/ingredients", json=body, headers=headers)
                assert added.status_code == 200, added.text
                _, message = await stream.next()
                assert message.data == {"added": [EGGS]}
                # The other process serves the page with both, from the same session.
                page_two = await tab_two.get("/my-fridge")
                assert page_two.status_code == 200
                assert "eggs" in page_two.text and "milk" in page_two.text
