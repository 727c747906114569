"""A real pgbouncer for the suite: Debian's package (1.18), started on a free loopback port
with a generated config in ``pool_mode = transaction``, in front of the test PostgreSQL.

``.ci/run`` installs the package when it is missing; elsewhere the pgbouncer tests skip
with one line saying how to get it, and under ``CI=true`` a missing pgbouncer fails them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL

from tests.ports import free_port

#: Server connections per (database, user) pair: small, so that a client pool larger than
#: it makes several clients share one server connection, which is what breaks session state.
DEFAULT_POOL_SIZE = 4
INSTALL_HINT = "install it with: apt-get install pgbouncer (Debian's package, 1.18)"


def binary() -> str | None:
    """The pgbouncer executable, or None."""
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


def _logs(workdir: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in sorted(workdir.glob("*.log")))


def _wait_for(port: int, process: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited at start:\n{_logs(workdir)}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen within 10 s:\n{_logs(workdir)}")


@contextmanager
def running(server: URL, *, pool_size: int = DEFAULT_POOL_SIZE) -> Iterator[URL]:
    """pgbouncer in transaction mode in front of ``server`` while the block runs; yields
    ``server``'s URL pointed at pgbouncer (same database, user and driver)."""
    executable = binary()
    if executable is None:
        raise FileNotFoundError(f"pgbouncer is not installed; {INSTALL_HINT}")
    port = free_port()
    # Its own directory right under the temporary directory: run as root, pgbouncer drops
    # to the postgres user, who cannot enter pytest's (private) temporary directories.
    workdir = Path(tempfile.mkdtemp(prefix="aegis-pgbouncer-"))
    try:
        with _started(executable, server, workdir, port, pool_size) as url:
            yield url
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def _started(
    executable: str, server: URL, workdir: Path, port: int, pool_size: int
) -> Iterator[URL]:
    user = server.username or "postgres"
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    log = workdir / "pgbouncer.log"
    (workdir / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {workdir / 'userlist.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {pool_size}",
                "max_client_conn = 2000",
                f"logfile = {log}",
                f"admin_users = {user}",
                # Fail fast rather than queue a test for long when the pool is busy.
                "query_wait_timeout = 30",
                "",
            ]
        )
    )
    command = [executable, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        # pgbouncer refuses to run as root: it drops to the postgres user, which must be
        # able to read its config and write its log.
        command[1:1] = ["-u", "postgres"]
        log.touch()
        for path in (workdir, *workdir.iterdir()):
            shutil.chown(path, "postgres")
    # Before it opens its log, pgbouncer reports on standard error: keep that too.
    with (workdir / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_for(port, process, workdir)
        yield server.set(host="127.0.0.1", port=port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
