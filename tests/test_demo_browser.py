"""The reference application's pages in a real headless Chromium (tests/browser.py), the
app under a real ``uvicorn --workers 2`` (tests/processes.py) on SQLite and PostgreSQL:
an ingredient added in one tab appears in the other, a chat answer streams to its end,
a visitor logs in and out, the operator panel fills live, and no page logs a console
error or a failed request. Screenshots go to the test's temporary directory; with
``AEGIS_UPDATE_SCREENSHOT=1`` the fridge's also to docs/screenshot.png (the README's).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import MetaData, func, select
from sqlalchemy.engine import URL

from aegis_demo import seed
from aegis_demo.realtime.models import ChatAnswer, Post
from tests.browser import Problems, browser  # noqa: F401 (the fixture)
from tests.conftest import MakeDb
from tests.processes import ROOT, uvicorn

on_sqlite_and_postgres = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
ADMIN_TOKEN = "browser-test-admin-token-0123"
WAIT_MS = 10_000


@pytest.fixture
async def app_url(make_db: MakeDb, db_url: URL, tmp_path: Path) -> AsyncIterator[str]:
    """``uvicorn aegis_demo.app:app --workers 2`` on an empty database; yields its URL."""
    await make_db(MetaData(), default=False)  # drops every table: the app makes its own
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DATABASE_")}
    env |= {
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "SESSION_COOKIE_SECURE": "false",
        "FRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        # Both workers must accept each other's CSRF tokens.
        "DEMO_CSRF_SECRET": secrets.token_urlsafe(32),
    }
    async with uvicorn(
        "aegis_demo.app:app", env=env, log=tmp_path / "app.log", ready_path="/", workers=2
    ) as base:
        yield base


async def shoot(page: Page, path: Path) -> None:
    await page.screenshot(path=str(path), full_page=True)


@on_sqlite_and_postgres
async def test_a_change_in_one_tab_shows_in_the_other_and_login_and_logout_work(
    browser: Browser,  # noqa: F811
    app_url: str,
    make_db: MakeDb,
    tmp_path: Path,
    backend: str,
) -> None:
    problems = Problems()
    context = await browser.new_context(base_url=app_url, viewport={"width": 1200, "height": 760})
    # Two tabs of one visitor: one context, so they share the session cookie.
    first = problems.watch(await context.new_page())
    await first.goto("/")
    await expect(first.locator("h1")).to_contain_text("Async database access")
    await shoot(first, tmp_path / "home.png")
    await first.goto("/my-fridge")
    second = problems.watch(await context.new_page())
    await second.goto("/my-fridge")
    await expect(second.locator("#live.on")).to_be_visible(timeout=WAIT_MS)
    await expect(first.locator("#live.on")).to_be_visible(timeout=WAIT_MS)

    await first.click("[data-add='1']")  # milk
    await first.click("[data-add='4']")  # carrot
    await expect(second.locator("#fridge li")).to_have_count(2, timeout=WAIT_MS)
    await expect(second.locator("#fridge")).to_contain_text("milk")
    await expect(second.locator("#fridge")).to_contain_text("carrot")
    await second.locator("#fridge li[data-id='4'] button").click()  # removed in the second
    await expect(first.locator("#fridge li")).to_have_count(1, timeout=WAIT_MS)

    await first.fill("#login input[name=user]", "jake")
    await first.click("#login button")
    await expect(first.get_by_test_id("user")).to_have_text("Signed in as jake")
    await expect(first.locator("#fridge li")).to_have_count(1)  # the fridge stayed
    await first.click("[data-add='2']")  # eggs, after the login rotated the session id
    await expect(first.locator("#fridge li")).to_have_count(2, timeout=WAIT_MS)
    await shoot(first, tmp_path / "fridge.png")
    if backend == "sqlite" and os.environ.get("AEGIS_UPDATE_SCREENSHOT") == "1":
        await shoot(first, ROOT / "docs" / "screenshot.png")
    await second.reload()
    await expect(second.get_by_test_id("user")).to_have_text("Signed in as jake")
    await expect(second.locator("#fridge li")).to_have_count(2, timeout=WAIT_MS)

    await second.click("#logout")
    await expect(second.locator("#login")).to_be_visible()
    await first.reload()
    await expect(first.locator("#login")).to_be_visible()
    await expect(first.locator("#fridge li")).to_have_count(0)  # the fridge went with it
    await context.close()
    assert problems.found == []

    # Two workers started at once on the empty database: the seed data exists once.
    db = await make_db(default=False)
    async with db.session() as session:
        posts = await session.scalar(select(func.count()).select_from(Post))
    assert posts == len(seed.POSTS)


@on_sqlite_and_postgres
async def test_chat_streams_to_the_end_and_the_other_pages_have_no_errors(
    browser: Browser,  # noqa: F811
    app_url: str,
    make_db: MakeDb,
    tmp_path: Path,
) -> None:
    problems = Problems()
    context = await browser.new_context(base_url=app_url, viewport={"width": 1200, "height": 760})
    page = problems.watch(await context.new_page())

    await page.goto("/chat")
    await page.fill("#ask input", "pool size")
    await page.click("#ask button")
    expected = "입력하신 'pool size'에 대한 AI 답변입니다."
    status = page.get_by_test_id("chat-status")
    await expect(status).to_have_text("Streaming…")
    await expect(status).to_have_text("Complete: the answer is stored.", timeout=WAIT_MS)
    await expect(page.get_by_test_id("answer")).to_have_text(expected)
    await shoot(page, tmp_path / "chat.png")

    await page.goto("/posts")
    await expect(page.locator("article.post")).to_have_count(len(seed.POSTS))
    form = page.locator("form.comment").first
    await form.locator("input").fill("Seen from a real browser")
    await form.locator("button").click()
    await expect(page.locator("article.post").first).to_contain_text("Seen from a real browser")
    await page.reload()
    await expect(page.locator("article.post").first).to_contain_text("Seen from a real browser")
    await shoot(page, tmp_path / "posts.png")

    await page.goto("/operator")
    await page.fill("#operator-login input", ADMIN_TOKEN)
    await page.click("#operator-login button")
    await expect(page.locator("#pools tr")).not_to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#access")).to_contain_text("/posts", timeout=WAIT_MS)
    await shoot(page, tmp_path / "operator.png")
    await page.click("#operator-logout")
    await expect(page.locator("#operator-login")).to_be_visible()

    await page.goto("/docs")
    await expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=WAIT_MS)
    await shoot(page, tmp_path / "docs.png")
    await context.close()
    assert problems.found == []

    db = await make_db(default=False)
    async with db.session() as session:
        stored = (await session.scalars(select(ChatAnswer))).all()
    assert [(a.question, a.answer, a.complete) for a in stored] == [("pool size", expected, True)]
