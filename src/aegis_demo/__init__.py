"""The reference application of aegis-shared: every seed in one service (``aegis demo``).

``aegis_demo.fridge`` is seed 002 (a fridge per visitor in a server-side session) and
``aegis_demo.realtime`` seed 003 (the chat token stream, posts with their comments). They
ship with the library, behind the ``demo`` extra, so that ``uvicorn
aegis_demo.fridge.app:app`` runs wherever ``aegis-shared[demo]`` is installed; nothing in
``aegis_shared`` imports them.
"""
