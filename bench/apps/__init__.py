"""The FastAPI apps of the ``http`` and ``sessions`` scenarios, one module each.

``http``: ``ours_app``, ``aa_app`` and ``sqlmodel_app`` serve ``GET /items/{id}`` as
``{"id", "name", "category", "price"}`` with a pool of 10. ``sessions``: ``fridge_ours_app``
(``aegis_demo.fridge`` on PostgreSQL) and ``fridge_starsessions_app`` (starsessions + Redis)
serve ``GET /fridge`` for a session cookie."""
