"""The entity most tables start from."""

from __future__ import annotations

from aegis_shared.models.base import Base
from aegis_shared.models.mixins import IntegerIdMixin, SoftDeleteMixin, TimestampMixin


class BaseEntity(IntegerIdMixin, TimestampMixin, SoftDeleteMixin, Base):
    """Integer ``id``, UTC ``created_at`` / ``updated_at`` and a nullable ``deleted_at``."""

    __abstract__ = True
