"""Declarative base, the common entity and its mixins."""

from aegis_shared.models.base import NAMING_CONVENTION, Base
from aegis_shared.models.entity import BaseEntity
from aegis_shared.models.mixins import IntegerIdMixin, SoftDeleteMixin, TimestampMixin
from aegis_shared.models.types import UTCDateTime, utcnow

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "BaseEntity",
    "IntegerIdMixin",
    "SoftDeleteMixin",
    "TimestampMixin",
    "UTCDateTime",
    "utcnow",
]
