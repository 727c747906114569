"""``python -m aegis_shared.cli``: the ``aegis`` command without its console script."""

from aegis_shared.cli import main

main()
