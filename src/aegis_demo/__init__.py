"""The reference application of aegis-shared: every seed in one service (``aegis demo``).

``aegis_demo.app`` is the service (``python -m aegis_demo``, ``uvicorn aegis_demo.app:app``):
``aegis_demo.fridge`` is seed 002 (a fridge per visitor in a server-side session, also an
app of its own: ``uvicorn aegis_demo.fridge.app:app``), ``aegis_demo.realtime`` seed 003
(the chat token stream, posts with their comments), ``aegis_demo.access_log`` seed 000 and
``aegis_demo.jobs`` seed 004; ``aegis_demo.web`` holds the pages. They ship with the
library, behind the ``demo`` extra; nothing in ``aegis_shared`` imports them.
"""
