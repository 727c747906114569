"""The CSRF defence (``CSRFMiddleware``, ``CSRFPolicy``, ``CSRFTokens``) through a real
uvicorn server and a real HTTP client: what a refused request gets back, and that its
handler never ran."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.requests import HTTPConnection

from aegis_shared.web import (
    CSRFMiddleware,
    CSRFPolicy,
    CSRFTokens,
    csrf_token,
    send_refusal,
)
from tests.http import serve

SECRET = "test-secret-" + "x" * 32
EVIL = "https://evil.example"
TRUSTED = "https://admin.example"


def make_app(**options: Any) -> tuple[FastAPI, list[str]]:
    """An app whose unsafe handlers record that they ran (the side effect a forged request
    must not cause)."""
    app = FastAPI()
    calls: list[str] = []

    @app.post("/logout")
    async def logout() -> dict[str, bool]:
        calls.append("logout")
        return {"ok": True}

    @app.put("/item")
    async def put_item() -> dict[str, bool]:
        calls.append("put")
        return {"ok": True}

    @app.delete("/item")
    async def delete_item() -> dict[str, bool]:
        calls.append("delete")
        return {"ok": True}

    @app.patch("/item")
    async def patch_item() -> dict[str, bool]:
        calls.append("patch")
        return {"ok": True}

    @app.api_route("/page", methods=["GET", "HEAD"])
    async def page() -> dict[str, bool]:
        calls.append("get")
        return {"ok": True}

    @app.get("/form")
    async def form(request: Request) -> dict[str, str]:
        return {"token": csrf_token(request)}

    @app.post("/submit")
    async def submit(request: Request) -> dict[str, Any]:
        # The raw body, as the app received it after the middleware read the form.
        body = await request.body()
        calls.append("submit")
        return {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    app.add_middleware(CSRFMiddleware, **options)
    return app, calls


@asynccontextmanager
async def client(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, list[str], str]]:
    app, calls = make_app(**options)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        yield http, calls, url


def assert_refused(response: httpx.Response) -> str:
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "csrf"
    message: str = body["detail"]
    assert message
    return message


# -- the origin checks -------------------------------------------------------------------------


async def test_cross_origin_post_is_refused_and_the_handler_does_not_run() -> None:
    async with client() as (http, calls, _):
        response = await http.post("/logout", headers={"Origin": EVIL})
        message = assert_refused(response)
        assert "evil" not in message  # the attacker's header is not echoed back
        assert "trusted_origins" in message  # says what to do
        assert calls == []


async def test_sec_fetch_site_cross_site_is_refused() -> None:
    async with client() as (http, calls, url):
        for headers in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "cross-site", "Origin": EVIL},
            # Sec-Fetch-Site wins over an Origin that looks like ours (Go's rule too).
            {"Sec-Fetch-Site": "cross-site", "Origin": url},
            {"Sec-Fetch-Site": "something-new"},
        ):
            assert_refused(await http.post("/logout", headers=headers))
        assert calls == []


async def test_same_site_sibling_subdomain_is_refused_unless_trusted() -> None:
    sibling = "https://blog.admin.example"
    async with client(trusted_origins=[TRUSTED]) as (http, calls, _):
        message = assert_refused(
            await http.post("/logout", headers={"Sec-Fetch-Site": "same-site", "Origin": sibling})
        )
        assert "same-site" in message
        assert calls == []
        response = await http.post(
            "/logout", headers={"Sec-Fetch-Site": "same-site", "Origin": TRUSTED}
        )
        assert response.status_code == 200
        assert calls == ["logout"]


async def test_same_origin_requests_pass() -> None:
    async with client() as (http, calls, url):
        https_same_host = url.replace("http://", "https://")
        for headers in (
            {"Sec-Fetch-Site": "same-origin", "Origin": url},
            {"Sec-Fetch-Site": "same-origin"},
            {"Sec-Fetch-Site": "none"},  # typed into the address bar, a bookmark
            {"Origin": url},  # an older browser without Sec-Fetch-Site
            # Behind a TLS-terminating proxy the app sees http while the browser says https:
            # only host[:port] is compared with the Host header.
            {"Origin": https_same_host},
        ):
            response = await http.post("/logout", headers=headers)
            assert response.status_code == 200, headers
        assert calls == ["logout"] * 5


async def test_an_origin_on_another_port_of_the_same_host_is_refused() -> None:
    async with client() as (http, calls, url):
        port = int(url.rsplit(":", 1)[1])
        other = f"http://127.0.0.1:{port + 1}"
        assert_refused(await http.post("/logout", headers={"Origin": other}))
        assert_refused(await http.post("/logout", headers={"Origin": "http://localhost"}))
        assert calls == []


async def test_trusted_origin_passes_and_only_that_exact_origin() -> None:
    async with client(trusted_origins=[TRUSTED, "http://localhost:3000"]) as (http, calls, _):
        ok = await http.post("/logout", headers={"Sec-Fetch-Site": "cross-site", "Origin": TRUSTED})
        assert ok.status_code == 200
        ok = await http.post("/logout", headers={"Origin": "http://localhost:3000"})
        assert ok.status_code == 200
        assert calls == ["logout", "logout"]
        for origin in (
            "http://admin.example",  # another scheme
            "https://admin.example:8443",  # another port
            "https://admin.example.evil.example",
            "http://localhost:3001",
        ):
            assert_refused(
                await http.post(
                    "/logout", headers={"Sec-Fetch-Site": "cross-site", "Origin": origin}
                )
            )
        assert calls == ["logout", "logout"]


async def test_no_origin_and_no_sec_fetch_site_passes() -> None:
    # curl, scripts, servers: no browser, so no user's cookie another site could abuse.
    async with client() as (http, calls, _):
        response = await http.post("/logout")
        assert response.status_code == 200
        assert calls == ["logout"]


async def test_origin_null_is_refused() -> None:
    async with client() as (http, calls, _):
        message = assert_refused(await http.post("/logout", headers={"Origin": "null"}))
        assert "null" in message
        assert_refused(
            await http.post("/logout", headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"})
        )
        assert calls == []


async def test_malformed_or_repeated_origin_is_refused() -> None:
    async with client() as (http, calls, url):
        assert_refused(await http.post("/logout", headers={"Origin": "not a url"}))
        assert_refused(await http.post("/logout", headers={"Origin": "http://127.0.0.1:99999"}))
        repeated = [("Origin", url), ("Origin", EVIL)]
        assert_refused(await http.post("/logout", headers=repeated))
        assert calls == []


async def test_safe_methods_always_pass() -> None:
    async with client() as (http, calls, _):
        cross = {"Sec-Fetch-Site": "cross-site", "Origin": EVIL}
        assert (await http.get("/page", headers=cross)).status_code == 200
        assert (await http.head("/page", headers=cross)).status_code == 200
        # OPTIONS reaches the app (no route: 405), not the CSRF refusal.
        assert (await http.options("/page", headers=cross)).status_code == 405
        assert calls == ["get", "get"]


async def test_every_unsafe_method_is_checked() -> None:
    async with client() as (http, calls, _):
        for method in ("PUT", "DELETE", "PATCH"):
            assert_refused(await http.request(method, "/item", headers={"Origin": EVIL}))
        assert calls == []


# -- CSRFPolicy on its own -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example/",
        "https://app.example/path",
        "https://app.example?x=1",
        "https://app.example#top",
        "app.example",
        "ftp://app.example",
        "https://user@app.example",
        "https://app.example:port",
        "*",
    ],
)
def test_policy_rejects_a_trusted_origin_that_is_not_an_origin(origin: str) -> None:
    with pytest.raises(ValueError, match=r"scheme://host\[:port\]"):
        CSRFPolicy(trusted_origins=[origin])


def test_policy_rejects_one_string_instead_of_a_list() -> None:
    with pytest.raises(ValueError, match=r"trusted_origins=\['https://app.example'\]"):
        CSRFPolicy(trusted_origins="https://app.example")
    with pytest.raises(ValueError, match="not an origin"):
        CSRFMiddleware(FastAPI(), trusted_origins=["https://app.example/"])


def test_policy_normalizes_case_and_default_ports() -> None:
    policy = CSRFPolicy(trusted_origins=["HTTPS://Admin.Example:443", "http://[::1]:8000"])
    assert policy.is_trusted("https://admin.example")
    assert policy.is_trusted("http://[::1]:8000")
    assert not policy.is_trusted("https://admin.example:8443")
    assert not policy.is_trusted("null")


def scope(method: str, headers: dict[str, str], kind: str = "http") -> dict[str, Any]:
    return {
        "type": kind,
        "method": method,
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


def test_policy_refusal_is_none_or_a_reason() -> None:
    policy = CSRFPolicy()
    assert (
        policy.refusal(scope("POST", {"host": "app.example", "origin": "https://app.example"}))
        is None
    )
    assert policy.refusal(scope("POST", {"host": "app.example:8443"})) is None
    reason = policy.refusal(scope("POST", {"host": "app.example", "origin": EVIL}))
    assert reason is not None and "Origin" in reason
    assert policy.refusal(scope("GET", {"host": "app.example", "origin": EVIL})) is None
    assert policy.refusal({"type": "lifespan"}) is None


# -- websocket handshakes (ASGI messages; uvicorn here has no websocket library) ----------------


async def run_websocket(headers: dict[str, str], extensions: dict[str, Any]) -> list[Any]:
    """Drive one websocket handshake through the middleware; what it sent back, and
    whether the app ran."""
    ran: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        ran.append("app")
        await send({"type": "websocket.accept"})

    sent: list[Any] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> Any:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Any) -> None:
        sent.append(message)

    ws_scope = scope("GET", headers, kind="websocket")
    ws_scope["extensions"] = extensions
    await CSRFMiddleware(app)(ws_scope, receive, send)
    return [*ran, *sent]


async def test_cross_site_websocket_handshake_is_refused() -> None:
    cross = {"host": "app.example", "origin": EVIL}
    closed = await run_websocket(cross, {})
    assert closed == [{"type": "websocket.close", "code": 1008, "reason": "cross-site handshake"}]
    denied = await run_websocket(cross, {"websocket.http.response": {}})
    assert denied[0]["type"] == "websocket.http.response.start"
    assert denied[0]["status"] == 403
    assert json.loads(denied[1]["body"])["error"] == "csrf"
    same = await run_websocket({"host": "app.example", "origin": "https://app.example"}, {})
    assert same == ["app", {"type": "websocket.accept"}]


# -- send_refusal from another middleware -----------------------------------------------------


async def test_send_refusal_from_a_pure_asgi_middleware() -> None:
    policy = CSRFPolicy(trusted_origins=[TRUSTED])
    ran: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        ran.append("inner")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        reason = policy.refusal(scope) if scope["type"] == "http" else None
        if reason is not None:
            await send_refusal(send, reason)
            return
        await inner(scope, receive, send)

    async with serve(outer) as url, httpx.AsyncClient(base_url=url) as http:
        refused = await http.post("/", headers={"Origin": EVIL})
        assert_refused(refused)
        assert refused.headers["cache-control"] == "no-store"
        assert ran == []
        assert (await http.post("/", headers={"Origin": TRUSTED})).status_code == 204
        assert ran == ["inner"]


# -- tokens for HTML forms -------------------------------------------------------------------------


def tokens(**options: Any) -> CSRFTokens:
    return CSRFTokens(SECRET, secure=False, **options)


async def test_form_without_token_is_refused() -> None:
    async with client(tokens=tokens()) as (http, calls, _):
        await http.get("/form")  # the cookie
        message = assert_refused(await http.post("/submit", data={"item": "milk"}))
        assert "X-CSRF-Token" in message and "csrf_token" in message
        assert calls == []


async def test_form_with_valid_token_passes_and_the_app_gets_the_whole_body() -> None:
    async with client(tokens=tokens()) as (http, calls, _):
        page = await http.get("/form")
        token = page.json()["token"]
        assert "csrf=" in page.headers["set-cookie"]
        form = {"item": "milk", "csrf_token": token, "note": "x" * 5000}
        response = await http.post("/submit", data=form)
        assert response.status_code == 200
        sent = httpx.Request("POST", "http://x/", data=form).read()
        assert response.json() == {"length": len(sent), "sha256": hashlib.sha256(sent).hexdigest()}
        assert dict(parse_qsl(sent.decode()))["item"] == "milk"
        # The header works too, for any body (here JSON).
        response = await http.post("/submit", json={"a": 1}, headers={"X-CSRF-Token": token})
        assert response.status_code == 200
        assert calls == ["submit", "submit"]


async def test_cookie_is_kept_across_pages_and_every_masked_token_is_valid() -> None:
    async with client(tokens=tokens()) as (http, calls, _):
        first = await http.get("/form")
        second = await http.get("/form")
        assert "set-cookie" in first.headers
        assert "set-cookie" not in second.headers
        assert "set-cookie" not in (await http.get("/page")).headers  # no token asked for
        # Masked afresh per page (BREACH), all valid for the one cookie.
        a, b = first.json()["token"], second.json()["token"]
        assert a != b
        assert (await http.post("/submit", data={"csrf_token": a})).status_code == 200
        assert (await http.post("/submit", data={"csrf_token": b})).status_code == 200
        # A script may also copy the cookie's own value into the header.
        raw = http.cookies["csrf"]
        assert (await http.post("/submit", headers={"X-CSRF-Token": raw})).status_code == 200
        assert calls == ["get", "submit", "submit", "submit"]


async def test_cookie_is_found_behind_other_malformed_cookies() -> None:
    async with client(tokens=tokens()) as (http, calls, _):
        await http.get("/form")
        raw = http.cookies["csrf"]
        http.cookies.clear()  # only the header below
        cookie = f'junk="unterminated; other=a b c; csrf={raw}; last=1'
        response = await http.post("/submit", headers={"X-CSRF-Token": raw, "Cookie": cookie})
        assert response.status_code == 200
        assert_refused(await http.post("/submit", headers={"X-CSRF-Token": raw}))
        assert calls == ["submit"]


async def test_tampered_token_is_refused() -> None:
    async with client(tokens=tokens()) as (http, calls, _):
        token = (await http.get("/form")).json()["token"]
        # A character in the middle: the last one of unpadded base64 may carry only
        # padding bits, which decoding ignores, so changing it can leave the same token.
        middle = len(token) // 2
        tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
        assert_refused(await http.post("/submit", data={"csrf_token": tampered}))
        assert_refused(await http.post("/submit", headers={"X-CSRF-Token": tampered}))
        # A genuine token that is not this client's cookie: another user's, say.
        other = tokens().new_token()
        message = assert_refused(await http.post("/submit", data={"csrf_token": other}))
        assert "does not match" in message
        assert calls == []


async def test_cookie_tampered_or_from_another_secret_is_refused() -> None:
    async with client(tokens=tokens()) as (http, calls, _):
        forged = CSRFTokens("another-secret-" + "y" * 32, secure=False).new_token()
        http.cookies.set("csrf", forged)
        message = assert_refused(await http.post("/submit", data={"csrf_token": forged}))
        assert "cookie" in message
        # ... and a fresh page replaces the bad cookie with a good one.
        token = (await http.get("/form")).json()["token"]
        assert token != forged
        assert (await http.post("/submit", data={"csrf_token": token})).status_code == 200
        assert calls == ["submit"]


async def test_token_without_cookie_is_refused() -> None:
    async with client(tokens=tokens()) as (http, calls, _):
        token = tokens().new_token()
        assert_refused(await http.post("/submit", headers={"X-CSRF-Token": token}))
        assert_refused(await http.post("/logout"))  # curl-like clients need the token too
        assert calls == []


async def test_token_does_not_bypass_the_origin_check() -> None:
    async with client(tokens=tokens()) as (http, calls, _):
        token = (await http.get("/form")).json()["token"]
        refused = await http.post("/submit", data={"csrf_token": token}, headers={"Origin": EVIL})
        assert_refused(refused)
        assert calls == []


def multipart(fields: list[tuple[str, bytes, str | None]], boundary: str) -> bytes:
    parts = []
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        parts.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


async def test_multipart_form_with_token_first_passes_with_a_large_file() -> None:
    boundary = "aegisBoundary7d1"
    upload = bytes(range(256)) * 4096  # 1 MiB, larger than the cap below
    async with client(tokens=tokens(max_form_bytes=64 * 1024)) as (http, calls, _):
        token = (await http.get("/form")).json()["token"]
        body = multipart(
            [("csrf_token", token.encode(), None), ("upload", upload, "a.bin")], boundary
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        response = await http.post("/submit", content=body, headers=headers)
        assert response.status_code == 200
        assert response.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}

        # The field after the file: not found within the cap, so refused with advice.
        late = multipart(
            [("upload", upload, "a.bin"), ("csrf_token", token.encode(), None)], boundary
        )
        message = assert_refused(await http.post("/submit", content=late, headers=headers))
        assert "first" in message
        # A small multipart form with the field anywhere is fine.
        small = multipart([("item", b"milk", None), ("csrf_token", token.encode(), None)], boundary)
        assert (await http.post("/submit", content=small, headers=headers)).status_code == 200
        bad = multipart([("csrf_token", b"forged.value", None)], boundary)
        assert_refused(await http.post("/submit", content=bad, headers=headers))
        assert calls == ["submit", "submit"]


async def test_urlencoded_form_over_the_cap_is_refused() -> None:
    async with client(tokens=tokens(max_form_bytes=1024)) as (http, calls, _):
        token = (await http.get("/form")).json()["token"]
        form = {"csrf_token": token, "note": "x" * 4096}
        message = assert_refused(await http.post("/submit", data=form))
        assert "X-CSRF-Token" in message
        # The header needs no body parsing, whatever the size.
        response = await http.post("/submit", data=form, headers={"X-CSRF-Token": token})
        assert response.status_code == 200
        assert calls == ["submit"]


async def test_default_cookie_is_host_prefixed_and_secure() -> None:
    async with client(tokens=CSRFTokens(SECRET)) as (http, _, _url):
        page = await http.get("/form")
        token = page.json()["token"]
        name, _, attributes = page.headers["set-cookie"].partition("; ")
        assert name.startswith("__Host-csrf=")
        parts = {a.lower() for a in attributes.split("; ")}
        assert parts == {"path=/", "samesite=lax", "secure"}  # no Domain, readable by scripts
        # The client's jar keeps a Secure cookie off plain HTTP: a browser would too.
        assert_refused(await http.post("/submit", headers={"X-CSRF-Token": token}))
        # Sent as a browser on https would send it:
        raw = name.partition("=")[2]
        response = await http.post(
            "/submit", headers={"X-CSRF-Token": token, "Cookie": f"__Host-csrf={raw}"}
        )
        assert response.status_code == 200


def test_tokens_configuration_errors() -> None:
    with pytest.raises(ValueError, match=r"secrets\.token_urlsafe\(32\)"):
        CSRFTokens("short")
    with pytest.raises(ValueError, match="__Host-"):
        CSRFTokens(SECRET, secure=False, cookie_name="__Host-csrf")
    with pytest.raises(ValueError, match="not a valid cookie name"):
        CSRFTokens(SECRET, cookie_name="a;b")
    assert SECRET not in repr(CSRFTokens(SECRET))
    with pytest.raises(TypeError, match="CSRFTokens"):
        CSRFMiddleware(FastAPI(), tokens=SECRET)  # type: ignore[arg-type]


def test_csrf_token_without_the_middleware_says_what_to_add() -> None:
    connection = HTTPConnection({"type": "http", "headers": [], "state": {}})
    with pytest.raises(RuntimeError, match=r"CSRFMiddleware, tokens=CSRFTokens"):
        csrf_token(connection)


# -- reading the form inside the middleware (ASGI messages, to choose the chunking) -----------


async def run_form(
    body_chunks: list[bytes], headers: dict[str, str], middleware_tokens: CSRFTokens
) -> tuple[bytes | None, list[Any]]:
    """POST the body in the given chunks; what the app received (``None``: it did not run)
    and what the client was sent."""
    received: list[bytes] = []
    ran = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ran
        ran = True
        more = True
        while more:
            message = await receive()
            received.append(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(body_chunks) - 1}
        for i, chunk in enumerate(body_chunks)
    ]

    async def receive() -> Any:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await CSRFMiddleware(app, tokens=middleware_tokens)(scope("POST", headers), receive, send)
    return (b"".join(received) if ran else None), sent


async def test_form_read_in_small_chunks_is_replayed_byte_for_byte() -> None:
    t = tokens()
    raw = t.new_token()
    boundary = "b0undary"
    body = multipart(
        [("item", b"milk", None), ("csrf_token", t.masked(raw).encode(), None)], boundary
    )
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]  # token split across chunks
    headers = {
        "host": "app.example",
        "cookie": f"csrf={raw}",
        "content-type": f'multipart/form-data; boundary="{boundary}"',
    }
    received, sent = await run_form(chunks, headers, t)
    assert received == body
    assert sent[0]["status"] == 200


async def test_client_gone_while_the_form_is_read_is_refused_without_running_the_app() -> None:
    t = tokens()
    raw = t.new_token()
    headers = {
        "host": "app.example",
        "cookie": f"csrf={raw}",
        "content-type": "application/x-www-form-urlencoded",
    }
    received, sent = await run_form([], headers, t)  # only http.disconnect arrives
    assert received is None
    assert sent[0]["status"] == 403
    assert "disconnected" in json.loads(sent[1]["body"])["detail"]


async def test_empty_origin_counts_as_no_origin() -> None:
    async with client() as (http, calls, _):
        assert (await http.post("/logout", headers={"Origin": ""})).status_code == 200
        assert calls == ["logout"]
