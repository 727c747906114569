"""``python -m aegis_demo`` as a reader runs it: a real subprocess on the embedded SQLite
default (``DATABASE_URL`` unset), serving ``/`` until SIGINT (Ctrl-C), then stopping
cleanly; and ``serve()``'s choices of cookie security."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from aegis_demo.serve import is_loopback
from tests.ports import free_port
from tests.processes import ROOT

START_WITHIN = 60.0


async def test_python_m_aegis_demo_serves_the_home_page_and_stops_on_sigint(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("DATABASE_", "DEMO_"))}
    env.pop("FRIDGE_ADMIN_TOKEN", None)
    env.pop("SESSION_COOKIE_SECURE", None)
    env["PYTHONPATH"] = str(ROOT / "src")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aegis_demo",
        "--port",
        str(port),
        cwd=tmp_path,  # the embedded SQLite file goes here
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        first = (await asyncio.wait_for(process.stdout.readline(), START_WITHIN)).decode()
        assert first.strip() == f"aegis demo: http://127.0.0.1:{port} (Ctrl-C stops it)"
        second = (await asyncio.wait_for(process.stdout.readline(), START_WITHIN)).decode()
        assert second.startswith(f"operator panel: http://127.0.0.1:{port}/operator")
        token = second.rsplit("admin token: ", 1)[1].strip()
        assert len(token) >= 20
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(START_WITHIN):
                while True:
                    try:
                        home = await client.get("/")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            assert home.status_code == 200
            assert "aegis-shared" in home.text
            # Plain http on loopback: the cookie is not Secure, or a browser would drop it.
            fridge = await client.get("/my-fridge")
            cookies = fridge.headers.get_list("set-cookie")
            assert cookies, fridge.headers
            assert not any("secure" in c.lower() for c in cookies), cookies
        process.send_signal(signal.SIGINT)
        output = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 0, output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "Traceback" not in output, output
    assert (tmp_path / "aegis.db").exists()  # the default: an embedded SQLite file


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_only_loopback_hosts_get_cookies_without_secure(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
