"""The data-access API of seeds 000, 001 and 004.

>>> from aegis_shared.database import (DatabaseManager, BaseRepository, TransactionManager,
...     with_db_retry, UnitOfWork, get_session, provide_services)
"""

from aegis_shared.database.annotations import Linked
from aegis_shared.database.dependencies import get_background_session, get_session
from aegis_shared.database.manager import DatabaseManager
from aegis_shared.database.pagination import KeysetPage, Page
from aegis_shared.database.providers import provide_services
from aegis_shared.database.registry import configure_database, get_database, reset_database
from aegis_shared.database.repository import BaseRepository, ListTruncatedWarning
from aegis_shared.database.retry import with_db_retry
from aegis_shared.database.session import AegisSession
from aegis_shared.database.transactions import TransactionManager
from aegis_shared.database.unit_of_work import BackgroundUnitOfWork, UnitOfWork
from aegis_shared.database.write_intent import declare_write

__all__ = [
    "AegisSession",
    "BackgroundUnitOfWork",
    "BaseRepository",
    "DatabaseManager",
    "KeysetPage",
    "Linked",
    "ListTruncatedWarning",
    "Page",
    "TransactionManager",
    "UnitOfWork",
    "configure_database",
    "declare_write",
    "get_background_session",
    "get_database",
    "get_session",
    "provide_services",
    "reset_database",
    "with_db_retry",
]
