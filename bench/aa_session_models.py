"""The table of Advanced Alchemy's Litestar session backend in the ``litestar`` scenario
(its ``SessionModelMixin``: a UUIDv7 key, the raw session id, the data as bytes, an expiry).
A module of its own because it imports Litestar, which the FastAPI apps do not need."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar.session import SessionModelMixin


class AASession(SessionModelMixin):
    __tablename__ = "bench_aa_sessions"
