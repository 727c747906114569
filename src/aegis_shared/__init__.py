"""aegis-shared: async database access for web services on SQLAlchemy 2.

The public API lives in the sub-packages the seed documents import from:
``aegis_shared.database``, ``aegis_shared.models``, ``aegis_shared.errors.exceptions``
and ``aegis_shared.config``.
"""

__version__ = "0.1.0"
