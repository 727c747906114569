"""Seed 003's posts for the pages: the list of posts with their comments (one
``selectinload``) and adding a comment. ``GET /api/v1/posts/{id}`` is the seed's own
endpoint, in :mod:`aegis_demo.realtime.app`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from aegis_demo.realtime.app import CommentOut, PostOut
from aegis_demo.realtime.models import Comment, Post
from aegis_shared.database import BaseRepository, UnitOfWork, get_session, with_db_retry

__all__ = ["NewComment", "list_posts", "router"]

#: Posts a page shows at most.
MAX_POSTS = 50

router = APIRouter(prefix="/api/v1", tags=["Real-time & Async"])
Session = Annotated[AsyncSession, Depends(get_session)]
#: A post id the column can hold (32-bit): anything else is a 422, not a database error.
PostId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class PostRepository(BaseRepository[Post]):
    """The posts."""


class CommentRepository(BaseRepository[Comment]):
    """The comments."""


class NewComment(BaseModel):
    """A comment to add to a post."""

    body: str = Field(min_length=1, max_length=500)


async def list_posts(session: AsyncSession) -> list[PostOut]:
    """The first posts with their comments (one more SELECT for all of them, as
    ``selectinload``), as response models: only declared fields."""
    posts = await PostRepository(session).list(order_by="id", limit=MAX_POSTS, load=["comments"])
    return [PostOut.model_validate(post) for post in posts]


@router.get("/posts", response_model=list[PostOut])
async def posts(session: Session) -> list[PostOut]:
    """Every post (the first 50) with its comments, loaded eagerly."""
    return await list_posts(session)


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
