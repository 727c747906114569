"""The ``aegis`` command as a real process: concurrent deploys, the migration lock, one-line
failures without passwords, the missing-extra hints and ``aegis demo``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from tests.cli_project import (
    COUNTER_TABLE,
    REVISION,
    VERSION_TABLE,
    aegis,
    cli_env,
    make_project,
    url_text,
)
from tests.ports import free_port

SECRET = "n0t-the-pw-4u"

HOLDER = """
import asyncio, sys
from aegis_shared.migrations.lock import migration_lock

async def main():
    async with migration_lock(sys.argv[1], wait=10):
        print("held", flush=True)
        await asyncio.sleep(120)

asyncio.run(main())
"""


def _query(url: URL, *statements: str) -> list[list[tuple[object, ...]]]:
    async def run() -> list[list[tuple[object, ...]]]:
        engine = create_async_engine(url)
        try:
            found = []
            async with engine.begin() as conn:
                for statement in statements:
                    result = await conn.execute(text(statement))
                    found.append([tuple(r) for r in result] if result.returns_rows else [])
            return found
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _reset(url: URL) -> None:
    _query(url, f"DROP TABLE IF EXISTS {COUNTER_TABLE}", f"DROP TABLE IF EXISTS {VERSION_TABLE}")


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*aegis(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python <args>`` with the command's environment (for -c and -m forms)."""
    return subprocess.run(
        [sys.executable, *args], env=cli_env(), cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("aegis: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_two_concurrent_upgrades_migrate_once(db_url: URL, tmp_path: Path) -> None:
    _reset(db_url)
    make_project(tmp_path)
    env = cli_env(DATABASE_URL=url_text(db_url))
    try:
        # Started together; the migration sleeps 1.5 s, so without the lock both would
        # find the database empty and run it.
        processes = [
            subprocess.Popen(
                [*aegis(), "db", "upgrade", "--json"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [(p.communicate(timeout=120), p.returncode) for p in processes]
        for (_, err), code in results:
            assert code == 0, err
        documents = [json.loads(out) for (out, _), _ in results]
        assert sorted(d["changed"] for d in documents) == [False, True]
        assert all(d["after"] == [REVISION] for d in documents)
        versions, rows = _query(
            db_url, f"SELECT version_num FROM {VERSION_TABLE}", f"SELECT note FROM {COUNTER_TABLE}"
        )
        assert versions == [(REVISION,)]
        assert rows == [("applied",)]
    finally:
        _reset(db_url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_a_held_lock_past_the_bound_fails_the_upgrade_in_one_line(
    db_url: URL, tmp_path: Path
) -> None:
    _reset(db_url)
    make_project(tmp_path)
    env = cli_env(DATABASE_URL=url_text(db_url))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url_text(db_url)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        blocked = _run(["db", "upgrade", "--lock-timeout", "1"], env, tmp_path)
        assert blocked.returncode == 1
        line = _one_line(blocked.stderr)
        assert "another migration has held the migration lock" in line
        assert "--lock-timeout" in line
        assert blocked.stdout == ""
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=30)
    try:
        # Nothing ran under the held lock; once it is gone the same command migrates.
        done = _run(["db", "upgrade", "--lock-timeout", "5", "--json"], env, tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["before"] == []
        assert _query(db_url, f"SELECT note FROM {COUNTER_TABLE}") == [[("applied",)]]
    finally:
        _reset(db_url)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_the_ddl_lock_timeout_fails_a_blocked_migration_instead_of_queueing(
    db_url: URL, tmp_path: Path
) -> None:
    """An open transaction that read cli_counter holds a lock ALTER TABLE must wait for
    (PostgreSQL's ACCESS SHARE, MariaDB's metadata lock, whose default wait is a day);
    with --ddl-lock-timeout 1 the migration gives up after a second, in one line."""
    _reset(db_url)
    make_project(tmp_path)
    env = cli_env(DATABASE_URL=url_text(db_url))
    assert _run(["db", "upgrade"], env, tmp_path).returncode == 0
    (tmp_path / "migrations" / "versions" / "c1i0000002_extra.py").write_text(
        '"""add extra"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "c1i0000002"\ndown_revision = "{REVISION}"\n\n\n'
        "def upgrade():\n"
        f'    op.add_column("{COUNTER_TABLE}", sa.Column("extra", sa.String(20)))\n\n\n'
        "def downgrade():\n"
        f'    op.drop_column("{COUNTER_TABLE}", "extra")\n'
    )
    reader = (
        "import asyncio, sys\n"
        "from sqlalchemy import text\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n"
        "async def main():\n"
        "    engine = create_async_engine(sys.argv[1])\n"
        "    async with engine.connect() as conn:\n"
        f"        await conn.execute(text('SELECT count(*) FROM {COUNTER_TABLE}'))\n"
        "        print('reading', flush=True)\n"
        "        await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", reader, url_text(db_url)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "reading"
        blocked = _run(["db", "upgrade", "--ddl-lock-timeout", "1", "--json"], env, tmp_path)
        assert blocked.returncode == 1
        line = _one_line(blocked.stderr)
        assert "lock timeout" in line.lower() or "lock wait timeout exceeded" in line.lower()
        assert "waited more than 1 s for a table lock" in line
        assert json.loads(blocked.stdout)["error"] == line.removeprefix("aegis: ")
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=30)
    try:
        current = _run(["db", "current", "--json"], env, tmp_path)
        assert json.loads(current.stdout)["current"] == [REVISION]  # the ALTER rolled back
    finally:
        _reset(db_url)


@pytest.mark.parametrize(
    "args",
    [
        ["db", "upgrade"],
        ["db", "current"],
        ["doctor"],
        ["sessions", "stats", "--model", "aegis_demo.fridge.models:UserFridgeSession"],
        ["events", "stats"],
    ],
    ids=lambda args: "-".join(a for a in args if not a.startswith("aegis_demo")),
)
def test_an_unreachable_server_fails_in_one_line_without_the_password(
    args: list[str], tmp_path: Path
) -> None:
    make_project(tmp_path)
    closed = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app"
    env = cli_env(DATABASE_URL=closed, DATABASE_CONNECT_TIMEOUT="2")
    result = _run([*args, "--json"], env, tmp_path)
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert SECRET not in result.stderr + result.stdout
    document = json.loads(result.stdout)  # --json: still one document on stdout
    assert document["ok"] is False
    if args[0] != "doctor":
        assert document["error"] == line.removeprefix("aegis: ")
    else:
        (finding,) = [f for f in document["findings"] if f["check"] == "connectivity"]
        assert finding["status"] == "fail"
        assert "app:***@127.0.0.1" in finding["detail"]


def test_without_typer_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['typer'] = None; from aegis_shared.cli import main; main()"
    result = _python(["-c", hide, "--help"], tmp_path)
    assert result.returncode == 1
    assert _one_line(result.stderr) == (
        'aegis: the aegis command needs Typer and Rich: pip install "aegis-shared[cli]"'
    )


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    result = _python(["-m", "aegis_shared.cli", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("db", "sessions", "events", "doctor", "demo"):
        assert group in result.stdout


def test_demo_without_the_application_says_how_to_install_it(tmp_path: Path) -> None:
    hide = (
        "import sys; sys.modules['aegis_demo.serve'] = None; sys.argv[0] = 'aegis'; "
        "from aegis_shared.cli import main; main()"
    )
    result = _python(["-c", hide, "demo"], tmp_path)
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert 'pip install "aegis-shared[demo]"' in line


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_demo_serves_prints_its_url_and_stops_on_ctrl_c(tmp_path: Path, json_output: bool) -> None:
    port = free_port()
    env = cli_env(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/demo.db")
    process = subprocess.Popen(
        [*aegis(), "demo", "--port", str(port), *(["--json"] if json_output else [])],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = f"http://127.0.0.1:{port}"
        first = process.stdout.readline()
        if json_output:
            text = first
            while not text.startswith("{") or not text.rstrip().endswith("\n}"):
                text += process.stdout.readline()  # the indented document, to its last "}"
            document = json.loads(text)
            assert document["ok"] is True and document["url"] == url
            assert document["operator"] == f"{url}/operator" and document["admin_token"]
        else:
            assert url in first
            assert "admin token:" in process.stdout.readline()
        for _ in range(300):
            try:
                response = httpx.get(f"{url}/", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                subprocess.run(["sleep", "0.1"], check=True)
        else:
            pytest.fail("the demo never answered")
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) in (0, 130, -signal.SIGINT)
        rest, errors = process.communicate()
        assert "Traceback" not in errors
        if json_output:
            assert rest.strip() == ""  # one document on stdout, nothing after it
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
