"""Settings read from the environment (and an optional ``.env`` file), as seed 001 lists them.

>>> settings = Settings()          # reads DATABASE_URL, DATABASE_POOL_SIZE, ...
>>> db = DatabaseManager.from_settings(settings)

A bad value fails at start-up with :class:`~aegis_shared.errors.exceptions.ConfigurationError`
naming the environment variable, instead of a pydantic trace with a lower-case field name.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aegis_shared.errors.exceptions import ConfigurationError
from aegis_shared.errors.redaction import mask_url, parse_url

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./aegis.db"


class Settings(BaseSettings):
    """Database (and session cookie) settings of an aegis-shared application.

    Every field is read from the environment variable of the same name in upper case
    (``database_pool_size`` from ``DATABASE_POOL_SIZE``), or passed as a keyword.
    """

    # hide_input_in_errors: the ValidationError chained to ConfigurationError would
    # otherwise print DATABASE_URL, password included, in every traceback.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        hide_input_in_errors=True,
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        repr=False,  # it may hold a password; repr(settings) ends up in logs
        description="SQLAlchemy URL; postgresql://, mysql:// and sqlite:// get an async driver.",
    )
    database_pool_size: int = Field(20, ge=1, description="Connections kept open in the main pool.")
    database_max_overflow: int = Field(10, ge=0, description="Extra connections allowed at peak.")
    database_pool_timeout: float = Field(
        30.0, gt=0, description="Seconds to wait for a connection."
    )
    database_pool_recycle: int = Field(
        3600, ge=-1, description="Seconds after which a connection is replaced; -1 never."
    )
    database_pool_pre_ping: bool = Field(
        False, description="Test each connection with a round trip before handing it out."
    )
    database_retry_attempts: int = Field(
        6, ge=1, description="Attempts made by @with_db_retry (the first and the retries)."
    )
    database_retry_backoff: float = Field(
        2.0, ge=1.0, description="Growth factor of the delay between retries."
    )
    database_retry_base_delay: float = Field(
        0.2, ge=0, description="Seconds before the first retry (grown by the backoff factor)."
    )
    database_retry_max_delay: float = Field(
        2.0, ge=0, description="Longest wait between two attempts, in seconds."
    )
    database_retry_deadline: float | None = Field(
        30.0,
        gt=0,
        description="Seconds after the first attempt began when no further attempt starts.",
    )
    database_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds a new connection may take before it fails."
    )
    database_command_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds the client waits for any answer from the server before it gives "
        "the connection up; unset: the statement timeout plus 5 s, or 60 s without one.",
    )
    database_echo: bool = Field(False, description="Log every SQL statement.")
    database_background_pool_size: int = Field(
        5, ge=1, description="Connections of the separate pool for background work."
    )
    database_background_max_overflow: int = Field(
        0, ge=0, description="Overflow of the background pool."
    )
    database_statement_timeout: float | None = Field(
        None, gt=0, description="Seconds after which the server cancels a statement; unset: none."
    )
    database_max_page_size: int = Field(
        1000,
        ge=1,
        description="Largest limit a repository list(), paginate() or keyset() accepts, and "
        "the most rows list() returns without a limit.",
    )
    database_prepared_statements: bool = Field(
        True,
        description="Server-side prepared statements on PostgreSQL; false behind pgbouncer "
        "in transaction mode.",
    )
    database_pgbouncer: bool = Field(
        False,
        description="DATABASE_URL is pgbouncer in transaction mode: no server-side prepared "
        "statements, the statement timeout SET LOCAL per transaction, session-scoped work "
        "(the event hub's LISTEN) on DATABASE_DIRECT_URL, which is then required for it.",
    )
    database_replica_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,  # may hold passwords, as DATABASE_URL
        description="PostgreSQL streaming standbys for read-only sessions, comma-separated; "
        "each read goes to one that has the client's own writes, else to the primary.",
    )
    database_replica_max_lag: float = Field(
        5.0,
        gt=0,
        description="Seconds a replica may lag behind the primary before reads skip it.",
    )
    database_fast_path: bool = Field(
        True, description="Lean driver-level reads for get_by_id, list and count."
    )
    database_direct_url: str | None = Field(
        None,
        repr=False,  # may hold a password, as DATABASE_URL
        description="PostgreSQL reached without a transaction pooler (pgbouncer), for "
        "session-scoped work such as the event hub's LISTEN; DATABASE_URL when unset.",
    )
    # Event log retention (aegis_shared.events.retention): a week by default, so a client
    # that reconnects after days away still resumes; no count limit, since a good one
    # depends on each channel's rate. "none" (or an empty value) turns a rule off.
    events_retention_max_age: float | None = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Seconds an event is kept; older ones are trimmed. none: no age limit.",
    )
    events_retention_max_count: int | None = Field(
        None,
        ge=1,
        description="Events kept per channel; older ones beyond it are trimmed. none (the "
        "default): no count limit.",
    )
    events_retention_interval: float = Field(
        600.0, gt=0, description="Seconds between two sweeps of the event retention sweeper."
    )
    events_retention_batch_size: int = Field(
        1000,
        ge=1,
        le=100_000,  # retention.MAX_BATCH_SIZE, not imported: settings import no feature
        description="Events removed per transaction by the retention trim.",
    )
    session_cookie_secure: bool = Field(
        True,
        description="Mark the session cookie Secure (and name it __Host-session); false only "
        "for local development over plain http.",
    )

    @field_validator("database_url")
    @classmethod
    def _url_parses(cls, value: str) -> str:
        parse_url(value, "DATABASE_URL")  # its error shows the URL masked
        return value

    @field_validator("database_replica_urls", mode="before")
    @classmethod
    def _replica_urls_parse(cls, value: Any) -> list[str]:
        if value is None or value == "":
            return []
        items = value.split(",") if isinstance(value, str) else list(value)
        urls = [str(item).strip() for item in items if str(item).strip()]
        for url in urls:
            parse_url(url, "DATABASE_REPLICA_URLS")  # its error shows the URL masked
        return urls

    @field_validator("database_direct_url")
    @classmethod
    def _direct_url_parses(cls, value: str | None) -> str | None:
        if value:
            parse_url(value, "DATABASE_DIRECT_URL")
        return value or None

    @field_validator("events_retention_max_age", "events_retention_max_count", mode="before")
    @classmethod
    def _none_turns_off(cls, value: Any) -> Any:
        # An environment variable cannot be unset to None: "none" or "" says it.
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
            return None
        return value

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ConfigurationError):
            problems.append(str(cause))  # already names the variable, the URL masked
            continue
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        given = error.get("input")
        # Any text may be a URL with a password in it (a new *_URL field, a URL pasted
        # into the wrong variable): mask every string shown.
        shown = mask_url(given) if isinstance(given, str) else given
        problems.append(f"{field.upper()}={shown!r} is invalid: {error['msg']}")
    return (
        "Invalid database settings: "
        + "; ".join(problems)
        + ". Fix the environment variable (or .env entry) and start again."
    )


__all__ = ["DEFAULT_DATABASE_URL", "Settings"]
