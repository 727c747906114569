"""The fridge's admin endpoints (seed 002's monitoring and cleanup), behind a bearer token.

``GET /admin/session-stats`` shows the counts; ``POST /admin/cleanup-sessions`` starts a
sweep of expired sessions in the background (as seed 002 does with ``BackgroundTasks``)
and answers ``202`` at once with the job, whose progress ``GET
/admin/cleanup-sessions/{job_id}`` shows, batch by batch.

The token comes from the environment (``FRIDGE_ADMIN_TOKEN``) or ``create_app(admin_token=...)``.
Without one the admin endpoints are switched off (403): an example that is deployed as-is
must not offer them to anyone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from aegis_demo.errors import errors
from aegis_shared.sessions import SessionStore

logger = logging.getLogger("aegis_demo.fridge.admin")

#: Finished jobs kept for their status pages; older ones are forgotten.
KEPT_JOBS = 20


class AdminSettings(BaseSettings):
    """``FRIDGE_ADMIN_TOKEN``: the bearer token of the admin endpoints (unset: disabled)."""

    model_config = SettingsConfigDict(env_prefix="FRIDGE_", extra="ignore")

    admin_token: SecretStr | None = None


@dataclass
class CleanupJob:
    """One background sweep and how far it got."""

    id: str
    status: Literal["running", "done", "failed"] = "running"
    batches: int = 0
    deleted: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None

    def progress(self, removed: int) -> None:
        """Count one committed batch (the store's ``on_batch`` callback)."""
        self.batches += 1
        self.deleted += removed

    def json(self) -> dict[str, Any]:
        """The job as the status endpoint shows it."""
        body = asdict(self)
        body["status_url"] = f"/admin/cleanup-sessions/{self.id}"
        return body


class CleanupJobs:
    """At most one sweep at a time; the last :data:`KEPT_JOBS` jobs remembered."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.jobs: OrderedDict[str, CleanupJob] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> CleanupJob:
        """The running job, or a new one started now."""
        running = next((j for j in self.jobs.values() if j.status == "running"), None)
        if running is not None:
            return running  # a second sweep would only race the first for the same rows
        job = CleanupJob(id=uuid.uuid4().hex)
        self.jobs[job.id] = job
        while len(self.jobs) > KEPT_JOBS:
            self.jobs.popitem(last=False)
        self._task = asyncio.get_running_loop().create_task(self._run(job), name="fridge cleanup")
        return job

    async def _run(self, job: CleanupJob) -> None:
        try:
            await self.store.cleanup_expired(on_batch=job.progress)
        except Exception:
            # The detail is for operators, in the log; the status page only says it failed.
            logger.exception("session cleanup job %s failed", job.id)
            job.status = "failed"
        else:
            job.status = "done"
        finally:
            job.finished_at = datetime.now(UTC)

    async def stop(self) -> None:
        """Cancel a sweep still running (at shutdown); its current batch rolls back."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])


def token_matches(guess: str, token: str) -> bool:
    """Is ``guess`` the admin token? In constant time: the time taken must not tell how
    much of a guess was right."""
    return secrets.compare_digest(guess.encode(), token.encode())


_bearer = HTTPBearer(auto_error=False, description="FRIDGE_ADMIN_TOKEN")


class RequireAdmin:
    """The dependency that lets only a request bearing ``token`` through."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> None:
        """Refuse the request unless it carries ``Authorization: Bearer <token>``."""
        if self.token is None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "The admin endpoints are disabled: set FRIDGE_ADMIN_TOKEN to enable them.",
            )
        if credentials is None or not token_matches(credentials.credentials, self.token):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "Send the admin token as 'Authorization: Bearer <token>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )


def admin_router(store: SessionStore, token: str | None, jobs: CleanupJobs) -> APIRouter:
    """The admin endpoints, each requiring ``Authorization: Bearer <token>``."""
    require_admin = RequireAdmin(token)
    router = APIRouter(
        prefix="/admin",
        dependencies=[Depends(require_admin)],
        tags=["admin"],
        responses=errors(
            (401, "The admin token is missing or wrong."),
            (403, "The admin endpoints are disabled (no FRIDGE_ADMIN_TOKEN)."),
        ),
    )

    @router.get("/session-stats")
    async def session_stats() -> dict[str, Any]:
        """Seed 002's monitoring: active sessions, fridge rows, expired ones waiting."""
        stats = await store.stats()
        return {
            "active_sessions": stats.active,
            "total_ingredients": stats.child_rows,
            "expired_waiting": stats.expired_waiting,
            "oldest_session": stats.oldest_created_at,
        }

    @router.post("/cleanup-sessions", status_code=status.HTTP_202_ACCEPTED)
    async def cleanup_sessions(response: Response) -> dict[str, Any]:
        """Start deleting expired sessions in the background (the sweeper also does this
        on its own schedule); answers at once with the job. A sweep already running is
        returned instead of starting a second one."""
        job = jobs.start()
        response.headers["Location"] = job.json()["status_url"]
        return {"message": "Session cleanup started", "job": job.json()}

    @router.get("/cleanup-sessions/{job_id}", responses=errors((404, "No such cleanup job.")))
    async def cleanup_status(job_id: str) -> dict[str, Any]:
        """A cleanup job's progress: batches committed, sessions deleted, its status."""
        job = jobs.jobs.get(job_id)
        if job is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "No such cleanup job (or forgotten).")
        return job.json()

    return router
