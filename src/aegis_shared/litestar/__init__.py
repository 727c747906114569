"""Litestar glue: the same library on the framework seed 004 comes from.

Needs the ``litestar`` extra (``pip install aegis-shared[litestar]``); no Starlette or
FastAPI. One plugin does the wiring::

    from litestar import Litestar
    from aegis_shared.litestar import AegisPlugin

    app = Litestar(route_handlers=[...], plugins=[AegisPlugin()])

- :class:`AegisPlugin` (:mod:`.plugin`): configures the default manager on start-up and
  closes it on shutdown, gives every request one session (the ``db_session``
  dependency, ``provide_services(..., connection=connection)`` in guards, middleware and
  handlers) committed at the request boundary, answers our errors with safe bodies and,
  with ``sessions=store``, keeps server-side sessions behind the CSRF check.
- :mod:`.dependencies`: ``provide_db_session`` and ``provide_http_session``.
- :mod:`.errors`: ``exception_handlers()``, the safe bodies of :mod:`aegis_shared.web.errors`.
- :mod:`.sessions`: the session cookie middleware and its options.
- :mod:`.csrf`: the CSRF check on its own, and ``csrf_token`` for templates.
- :mod:`.events`: SSE from the event hub as Litestar's ``ServerSentEvent``, with
  ``Last-Event-ID`` resume.
"""

from aegis_shared.litestar.csrf import csrf_middleware, csrf_token
from aegis_shared.litestar.dependencies import provide_db_session, provide_http_session
from aegis_shared.litestar.errors import exception_handlers
from aegis_shared.litestar.events import event_stream, last_event_id
from aegis_shared.litestar.plugin import AegisPlugin
from aegis_shared.litestar.sessions import SessionOptions, session_middleware

__all__ = [
    "AegisPlugin",
    "SessionOptions",
    "csrf_middleware",
    "csrf_token",
    "event_stream",
    "exception_handlers",
    "last_event_id",
    "provide_db_session",
    "provide_http_session",
    "session_middleware",
]
