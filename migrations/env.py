"""Alembic environment (seed 001): the models' metadata, the URL from DATABASE_URL."""

from aegis_shared.migrations import run_migrations
from examples.quickstart_models import Base

run_migrations(Base.metadata)
