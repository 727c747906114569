"""A PostgreSQL primary and a streaming standby of the suite's own, on free loopback ports.

The shared server on 5432 allows no replication connections and must not be reconfigured,
so the suite makes a primary with ``initdb`` (run as the postgres user when the suite runs
as root: PostgreSQL refuses to run as root), a standby from it with ``pg_basebackup -R``,
and removes both at the end. ``Pair.set_apply_delay`` makes lag on demand
(``recovery_min_apply_delay``, reloaded without a restart). Both run with ``fsync=off``:
they are thrown away, and making them costs about two seconds.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

from tests.ports import free_port

INSTALL_HINT = "install PostgreSQL's server binaries (apt-get install postgresql)"


def bindir() -> Path | None:
    """The directory of PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class Pair:
    """A running primary and standby."""

    primary: URL
    standby: URL
    standby_dir: Path

    def set_apply_delay(self, seconds: float) -> None:
        """Make the standby apply WAL ``seconds`` late (0: as soon as it arrives)."""
        conf = self.standby_dir / "aegis-delay.conf"
        conf.write_text(f"recovery_min_apply_delay = '{int(seconds * 1000)}ms'\n")
        _as_postgres(["chmod", "644", str(conf)], check=False)
        self._pg_ctl("reload")

    def stop_standby(self) -> None:
        """Stop the standby at once (it is down until :meth:`start_standby`)."""
        self._pg_ctl("stop", "-m", "immediate")

    def start_standby(self) -> None:
        """Start the stopped standby and wait until it accepts connections."""
        self._pg_ctl("start", "-w", "-l", str(self.standby_dir / "server.log"))

    def _pg_ctl(self, *args: str) -> None:
        directory = bindir()
        assert directory is not None
        _as_postgres([str(directory / "pg_ctl"), "-D", str(self.standby_dir), *args])


def _as_postgres(command: list[str], *, check: bool = True) -> None:
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 60
wal_level = replica
max_wal_senders = 4
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
include_if_exists = 'aegis-delay.conf'
"""


@contextmanager
def primary_and_standby() -> Iterator[Pair]:
    """Make, start, yield and finally remove a primary and its streaming standby."""
    directory = bindir()
    if directory is None:
        raise FileNotFoundError(f"initdb not found; {INSTALL_HINT}")
    base = Path(tempfile.mkdtemp(prefix="aegis-replication-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    primary_dir, standby_dir = base / "primary", base / "standby"
    ports = free_port(), free_port()
    started: list[Path] = []
    try:
        _as_postgres(
            [
                *(str(directory / "initdb"), "-D", str(primary_dir), "-U", "postgres"),
                *("--auth=trust", "--no-sync", "--no-instructions", "-E", "UTF8"),
            ]
        )
        _write_settings(primary_dir, ports[0], base)
        _start(directory, primary_dir)
        started.append(primary_dir)
        _as_postgres(
            [
                *(str(directory / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(ports[0])),
                *("-U", "postgres", "-D", str(standby_dir), "-R", "-X", "stream"),
                *("--checkpoint=fast", "--no-sync"),
            ]
        )
        _write_settings(standby_dir, ports[1], base)
        _start(directory, standby_dir)
        started.append(standby_dir)
        url = URL.create("postgresql+asyncpg", username="postgres", host="127.0.0.1")
        yield Pair(
            url.set(port=ports[0], database="postgres"),
            url.set(port=ports[1], database="postgres"),
            standby_dir,
        )
    finally:
        for data in reversed(started):
            _as_postgres(
                [str(directory / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"],
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)


def _write_settings(data: Path, port: int, sockets: Path) -> None:
    # postgresql.conf belongs to the postgres user; the suite's settings go in a file it
    # includes, appended by the postgres user.
    extra = data / "aegis.conf"
    text = _SETTINGS.format(port=port, sockets=sockets)
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)
    _as_postgres(["cp", handle.name, str(extra)])
    os.unlink(handle.name)
    conf = data / "postgresql.conf"
    if "include_if_exists = 'aegis.conf'" not in _read_as_postgres(conf):
        _as_postgres(["sh", "-c", f"echo \"include_if_exists = 'aegis.conf'\" >> '{conf}'"])


def _read_as_postgres(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _start(directory: Path, data: Path) -> None:
    _as_postgres(
        [
            *(str(directory / "pg_ctl"), "-D", str(data), "-w", "-t", "30"),
            *("-l", str(data / "server.log"), "start"),
        ]
    )
