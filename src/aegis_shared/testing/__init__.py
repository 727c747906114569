"""Test helpers: statement counting for N+1 checks and an isolated-session pytest plugin.

The pytest plugin (:mod:`aegis_shared.testing.plugin`) loads automatically once
aegis-shared is installed and provides the ``aegis_db``, ``aegis_session`` and
``assert_max_queries`` fixtures.
"""

from aegis_shared.testing.counting import QueryCounter, assert_max_queries, count_queries
from aegis_shared.testing.isolation import isolated_session

__all__ = ["QueryCounter", "assert_max_queries", "count_queries", "isolated_session"]
