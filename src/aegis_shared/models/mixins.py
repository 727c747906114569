"""The columns :class:`~aegis_shared.models.BaseEntity` is made of, usable one by one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Mapped, mapped_column

from aegis_shared.models.types import UTCDateTime, utcnow


class IntegerIdMixin:
    """An auto-incremented integer primary key ``id``."""

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


class TimestampMixin:
    """``created_at`` and ``updated_at`` as aware UTC datetimes, set by the library on write."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )


class SoftDeleteMixin:
    """A nullable ``deleted_at``: set by ``soft_delete``, cleared by ``restore``."""

    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, default=None)

    @property
    def is_deleted(self) -> bool:
        """True once the row has been soft-deleted."""
        return self.deleted_at is not None
