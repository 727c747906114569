"""The three FastAPI apps of the ``http`` scenario, one module each, all serving
``GET /items/{id}`` as ``{"id", "name", "category", "price"}`` with a pool of 10."""
