"""Benchmarks of aegis_shared against its peers: ``python -m bench <scenario>``.

Scenarios: ``reads``, ``lists``, ``bulk``, ``http``, ``all``; tools: ``profile``, ``chart``,
``report``. Results go to ``bench/results/<scenario>.json``; see ``docs/benchmarks.md``.
"""
