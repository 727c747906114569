"""Seed 003's posts for the pages: the list of posts with their comments (one
``selectinload``) and adding a comment. ``GET /api/v1/posts/{id}`` is the seed's own
endpoint, in :mod:`aegis_demo.realtime.app`.

``GET /api/v1/posts`` reads through seed 004's ``provide_services(...,
connection=request)``: the service on the request's own session (the app's
``DatabaseSessionMiddleware``), which the request ends, not the block."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_demo.realtime.app import CommentOut, PostOut
from aegis_demo.realtime.models import Comment, Post
from aegis_shared.database import BaseRepository, UnitOfWork, provide_services, with_db_retry

__all__ = ["NewComment", "PostService", "list_posts", "provide_post_service", "router"]

#: Posts a page shows at most.
MAX_POSTS = 50

router = APIRouter(prefix="/api/v1", tags=["Real-time & Async"])
#: A post id the column can hold (32-bit): anything else is a 422, not a database error.
PostId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class PostRepository(BaseRepository[Post]):
    """The posts."""


class CommentRepository(BaseRepository[Comment]):
    """The comments."""


class NewComment(BaseModel):
    """A comment to add to a post."""

    body: str = Field(min_length=1, max_length=500)


class PostService:
    """The posts as pages and handlers read them (seed 004's service on a session)."""

    def __init__(self, session: AsyncSession) -> None:
        self.posts = PostRepository(session)

    async def with_comments(self) -> list[PostOut]:
        """The first posts with their comments (one more SELECT for all of them, as
        ``selectinload``), as response models: only declared fields."""
        found = await self.posts.list(order_by="id", limit=MAX_POSTS, load=["comments"])
        return [PostOut.model_validate(post) for post in found]


async def provide_post_service(session: AsyncSession) -> AsyncGenerator[PostService, None]:
    """Seed 004's provider shape: the service on ``session``."""
    yield PostService(session)


async def list_posts(session: AsyncSession) -> list[PostOut]:
    """The first posts with their comments, on ``session``."""
    return await PostService(session).with_comments()


@router.get("/posts", response_model=list[PostOut])
async def posts(request: Request) -> list[PostOut]:
    """Every post (the first 50) with its comments, loaded eagerly."""
    async with provide_services(provide_post_service, connection=request) as (service,):
        return await service.with_comments()


class PostUnitOfWork(UnitOfWork):
    """Posts and their comments on one session."""

    posts: PostRepository
    comments: CommentRepository


@router.post("/posts/{post_id}/comments", status_code=status.HTTP_201_CREATED)
@with_db_retry
async def add_comment(post_id: PostId, comment: NewComment) -> CommentOut:
    """Add a comment to a post; answers with it. A missing post is a 404 ``not_found``."""
    # write=True: it reads, then writes; SQLite then takes its write lock at BEGIN, where a
    # read lock could not be upgraded while another request writes.
    async with PostUnitOfWork(write=True) as uow:
        await uow.posts.get_one(post_id)  # EntityNotFoundError when missing: a 404
        row = await uow.comments.create({"post_id": post_id, "body": comment.body})
        await uow.commit()
        return CommentOut.model_validate(row)
