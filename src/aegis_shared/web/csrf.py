"""CSRF defence for cookie sessions: ``CSRFMiddleware``, ``CSRFPolicy`` and ``CSRFTokens``.

A browser sends the session cookie with any request to this site, also one that another
site's page made it send (a form posted to ``/logout``): that is cross-site request
forgery. ``SameSite=Lax`` stops most of it, not all (a sibling subdomain is "same site";
old browsers ignore it). The defence here follows OWASP's CSRF Prevention cheat sheet
("Fetch Metadata" and "Verifying origin with standard headers") and the model of Go 1.25's
``net/http.CrossOriginProtection``; for unsafe methods (anything but GET, HEAD, OPTIONS and
TRACE):

1. ``Sec-Fetch-Site: same-origin`` or ``none`` (the user typed the address, a bookmark)
   passes. Any other value (``cross-site``, ``same-site``) is refused unless the
   request's ``Origin`` is one of ``trusted_origins``.
2. Without ``Sec-Fetch-Site`` (older browsers), an ``Origin`` whose ``host[:port]``
   equals the request's ``Host`` header passes; ``Origin: null`` and any other origin are
   refused unless trusted.
3. A request with neither header passes: it comes from a non-browser client (curl, a
   script, a server), which no other site can make send a user's cookie.

Only ``host[:port]`` is compared with ``Host``, not the scheme: behind a TLS-terminating
proxy the app sees ``http`` while the browser's ``Origin`` says ``https``, and comparing
schemes would refuse every same-origin request. The cost: a page served from this same
host over plain HTTP (only an active network attacker could inject one) passes; serve the
site with HSTS. Trusted origins, by contrast, are matched exactly, scheme included.

Websocket handshakes are checked the same way whatever their method (a cross-site page
may open a websocket that carries the user's cookie: cross-site websocket hijacking).

For HTML forms, :class:`CSRFTokens` adds an optional signed double-submit token: the
cookie holds a random value and its HMAC under the app's secret, and every unsafe request
must repeat that value in the ``X-CSRF-Token`` header or a ``csrf_token`` form field;
templates get it from :func:`csrf_token`. It needs no session store.

Pure ASGI, so another pure-ASGI middleware (the session middleware) can call
:meth:`CSRFPolicy.refusal` and :func:`send_refusal` directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from email.message import Message as _MimeHeader
from http.cookies import SimpleCookie
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlsplit

from aegis_shared.web.asgi import ASGIApp, Message, Receive, Scope, Send, cookie_values

logger = logging.getLogger("aegis_shared.web")

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: The OpenAPI operations (lower case, as the schema names them) that the check may refuse.
UNSAFE_OPENAPI_METHODS: Final = frozenset({"post", "put", "patch", "delete"})
STATE_KEY: Final = "aegis.csrf"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HOST_PREFIX: Final = "__Host-"
_SIGNATURE_CONTEXT: Final = b"aegis-shared csrf token v1:"
_MAX_TOKEN_LENGTH: Final = 200  # a real token is 76 characters; anything longer is junk
_FORM_TYPES: Final = ("application/x-www-form-urlencoded", "multipart/form-data")

# Refusal reasons. Fixed texts: no header value an attacker controls is echoed to the client.
_CROSS_SITE: Final = (
    "The browser reports that this request comes from another site (Sec-Fetch-Site: {site}) "
    "and its Origin is not a trusted origin. Submit it from this site's own pages, or add the "
    "other site's origin to trusted_origins."
)
_NULL_ORIGIN: Final = (
    "The request's Origin is 'null' (a sandboxed page, a local file or a cross-site "
    "redirect), so it cannot be shown to come from this site. Submit it from this site's "
    "own pages."
)
_OTHER_ORIGIN: Final = (
    "The request's Origin is not this site (it does not match the Host header) and is not a "
    "trusted origin. Submit it from this site's own pages, or add the other site's origin "
    "to trusted_origins."
)
_BAD_ORIGIN: Final = (
    "The request's Origin header is malformed or repeated, so it cannot be shown to come "
    "from this site. Send one Origin header of the form scheme://host[:port]."
)
_NO_COOKIE: Final = (
    "The CSRF cookie is missing or invalid. Load the page with the form again (it sets a "
    "fresh cookie) and resubmit."
)
_NO_TOKEN: Final = (
    "The CSRF token is missing. Send it in the {header} header or the {field} form field "
    "(see csrf_token() in aegis_shared.web)."
)
_WRONG_TOKEN: Final = (
    "The CSRF token does not match the CSRF cookie. Load the page with the form again and resubmit."
)
_FORM_TOO_LARGE: Final = (
    "The form is too large to look for the CSRF token in it. Send the token in the "
    "{header} header, or put the {field} field first in the form."
)
_DISCONNECTED: Final = "The client disconnected before its form was read."


def _normalize_origin(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{_host_port(host, port, scheme)}"


def _parse_trusted_origin(value: str) -> str:
    """``scheme://host[:port]``, lowercased, default port dropped; ``ValueError`` otherwise."""
    hint = (
        f"trusted origin {value!r} is not an origin: give scheme://host[:port] "
        "(e.g. 'https://app.example.com' or 'http://localhost:8000'), "
    )
    if not isinstance(value, str):
        raise ValueError(hint + "as a string")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(hint + "with a numeric port") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(hint + "with the scheme http or https")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ValueError(hint + "with a host and no user name")
    if parts.path or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(hint + "without a path, query or fragment (not even a trailing '/')")
    return _normalize_origin(parts.scheme, parts.hostname, port)


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k.lower() == name]


def _host_port(host: str, port: int | None, scheme: str) -> str:
    """``host[:port]`` without the scheme's default port, for comparing with ``Host``."""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address, which urlsplit gave without its brackets
    return host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"


def _matches_host(origin: str, host_header: str | None) -> bool:
    """Does the Origin's ``host[:port]`` equal the ``Host`` header (scheme ignored)?"""
    if not host_header:
        return False
    try:
        o = urlsplit(origin)
        h = urlsplit("//" + host_header.strip())
        o_port, h_port = o.port, h.port
    except ValueError:
        return False
    if not o.hostname or not h.hostname or h.path or h.username is not None:
        return False
    scheme = o.scheme
    return _host_port(o.hostname, o_port, scheme) == _host_port(h.hostname, h_port, scheme)


@dataclass(frozen=True)
class CSRFPolicy:
    """Which unsafe requests a browser may send here: the checks in this module's docstring.

    >>> policy = CSRFPolicy(trusted_origins=["https://admin.example.com"])
    >>> reason = policy.refusal(scope)      # None: let it through
    >>> if reason is not None:
    ...     await send_refusal(send, reason)

    ``trusted_origins`` are other origins (``scheme://host[:port]``, no path) whose pages
    may post here; a malformed one raises ``ValueError`` at once. The app's own origin needs
    no entry.
    """

    trusted_origins: Sequence[str] = ()
    _trusted: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.trusted_origins, str):
            raise ValueError(
                "trusted_origins must be a list of origins, not one string: "
                f"write trusted_origins=[{self.trusted_origins!r}]"
            )
        origins = tuple(self.trusted_origins)
        object.__setattr__(self, "trusted_origins", origins)
        object.__setattr__(self, "_trusted", frozenset(_parse_trusted_origin(o) for o in origins))

    def is_trusted(self, origin: str) -> bool:
        """Is this ``Origin`` header value one of :attr:`trusted_origins`?"""
        try:
            return _parse_trusted_origin(origin) in self._trusted
        except ValueError:
            return False

    def refusal(self, scope: Scope) -> str | None:
        """Why this request must be refused as cross-site (a message for the client), or
        ``None`` when it may go on. Only ``http`` and ``websocket`` scopes are checked."""
        if scope["type"] == "http":
            if scope.get("method", "GET").upper() in SAFE_METHODS:
                return None
        elif scope["type"] != "websocket":
            return None
        origins = _header_values(scope, b"origin")
        if len(origins) > 1:
            return _BAD_ORIGIN
        # An empty Origin is no Origin (as in Go): no browser sends one.
        origin = (origins[0].strip() or None) if origins else None
        sites = _header_values(scope, b"sec-fetch-site")
        site = sites[0].strip().lower() if len(sites) == 1 else ("?" if sites else None)
        if site in ("same-origin", "none"):
            return None
        if origin is not None and self.is_trusted(origin):
            return None
        if site is not None:
            known = site in ("cross-site", "same-site")
            return _CROSS_SITE.format(site=site if known else "not same-origin")
        if origin is None:
            return None  # neither header: not a browser, so no ambient cookie to abuse
        if origin == "null":
            return _NULL_ORIGIN
        hosts = _header_values(scope, b"host")
        if len(hosts) == 1 and _matches_host(origin, hosts[0]):
            return None
        return _OTHER_ORIGIN


async def send_refusal(send: Send, reason: str) -> None:
    """Send the 403 for a refused HTTP request: ``{"error": "csrf", "detail": reason}``."""
    body = json.dumps({"error": "csrf", "detail": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"vary", b"origin, sec-fetch-site"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_websocket_refusal(scope: Scope, receive: Receive, send: Send, reason: str) -> None:
    """Refuse a websocket handshake: a 403 with the JSON body where the server supports
    the ASGI denial-response extension, otherwise a close before accept (also a 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client went away already
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"error": "csrf", "detail": reason}).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.close", "code": 1008, "reason": "cross-site handshake"})


class CSRFTokens:
    """Signed double-submit tokens for HTML forms (OWASP's "signed double-submit cookie").

    The cookie holds ``random.HMAC-SHA256(secret, random)``; an unsafe request must send the
    same value (or the masked form :func:`csrf_token` puts in pages) in the ``X-CSRF-Token``
    header or the ``csrf_token`` form field. Another site can neither read the cookie nor
    forge a value that verifies without the secret. Websocket handshakes carry no token:
    the origin check covers them.

    ``secret``: at least 32 bytes, e.g. ``secrets.token_urlsafe(32)`` kept in the app's
    settings (never logged; rotating it invalidates open forms). The cookie is
    ``__Host-csrf``: ``Secure``, ``Path=/``, no ``Domain``, so a sibling subdomain cannot
    plant one. ``secure=False`` is for plain-HTTP development only; its cookie is ``csrf``.
    It is not ``HttpOnly``, on purpose (as in Django): a script may copy it into the header,
    and a script able to read it (XSS) could read the page's token anyway.

    Form bodies (urlencoded and multipart) are read up to ``max_form_bytes`` to find the
    field, then replayed to the app unchanged; in a multipart form (a file upload) put the
    field first, so it is found before the file.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        secure: bool = True,
        cookie_name: str | None = None,
        header_name: str = "X-CSRF-Token",
        field_name: str = "csrf_token",
        max_form_bytes: int = 1024 * 1024,
    ) -> None:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(key) < 32:
            raise ValueError(
                "The CSRF secret is too short (fewer than 32 bytes): generate one with "
                "secrets.token_urlsafe(32) and keep it in the app's settings"
            )
        name = cookie_name if cookie_name is not None else ("__Host-csrf" if secure else "csrf")
        if not name or any(c in name for c in ' ;,="\t\r\n'):
            raise ValueError(f"cookie_name={name!r} is not a valid cookie name")
        if name.startswith(_HOST_PREFIX) and not secure:
            raise ValueError(
                f"cookie_name={name!r} with secure=False: browsers drop a __Host- cookie "
                "without Secure; leave cookie_name unset for development"
            )
        if max_form_bytes < 1:
            raise ValueError("max_form_bytes must be positive")
        self._key = key
        self.secure = secure
        self.cookie_name = name
        if not header_name or not field_name:
            raise ValueError("header_name and field_name must not be empty")
        self.header_name = header_name
        self.field_name = field_name
        self.max_form_bytes = max_form_bytes

    def __repr__(self) -> str:
        # Never the secret.
        return f"CSRFTokens(cookie_name={self.cookie_name!r}, secure={self.secure!r})"

    def _sign(self, nonce: str) -> str:
        digest = hmac.new(self._key, _SIGNATURE_CONTEXT + nonce.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def new_token(self) -> str:
        """A fresh token: a random value and its signature."""
        nonce = secrets.token_urlsafe(24)
        return f"{nonce}.{self._sign(nonce)}"

    def is_valid(self, token: str | None) -> bool:
        """Was ``token`` made by :meth:`new_token` with this secret?"""
        if not token or len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
            return False
        nonce, dot, signature = token.partition(".")
        if not dot or not nonce:
            return False
        return hmac.compare_digest(signature.encode(), self._sign(nonce).encode())

    def masked(self, token: str) -> str:
        """``token`` under a fresh one-time pad, for embedding in a page: it changes on every
        call, so a compressed response that also reflects attacker input does not leak it
        byte by byte (BREACH). :meth:`matches` accepts both forms."""
        raw = token.encode()
        pad = secrets.token_bytes(len(raw))
        masked = pad + bytes(a ^ b for a, b in zip(pad, raw, strict=True))
        return base64.urlsafe_b64encode(masked).rstrip(b"=").decode()

    def matches(self, sent: str, expected: str) -> bool:
        """Is ``sent`` (the cookie's value, or it :meth:`masked`) the token ``expected``?"""
        if len(sent) > 4 * _MAX_TOKEN_LENGTH or not sent.isascii():
            return False
        if "." not in sent:  # masked
            try:
                data = base64.urlsafe_b64decode(sent + "=" * (-len(sent) % 4))
            except ValueError:
                return False
            half, odd = divmod(len(data), 2)
            if odd or not half:
                return False
            pad, masked = data[:half], data[half:]
            sent = bytes(a ^ b for a, b in zip(pad, masked, strict=True)).decode("latin-1")
        return hmac.compare_digest(sent.encode("latin-1"), expected.encode())

    def cookie_token(self, scope: Scope) -> str | None:
        """The client's token cookie if it verifies, else ``None``."""
        for value in cookie_values(scope, self.cookie_name):
            if self.is_valid(value):
                return value
        return None

    def set_cookie_header(self, token: str) -> tuple[bytes, bytes]:
        """The ``Set-Cookie`` header that gives the client ``token``."""
        cookie: SimpleCookie = SimpleCookie()
        cookie[self.cookie_name] = token
        morsel = cookie[self.cookie_name]
        morsel["path"] = "/"
        morsel["samesite"] = "Lax"
        if self.secure:
            morsel["secure"] = True
        return b"set-cookie", morsel.OutputString().encode("latin-1")

    async def refusal(self, scope: Scope, receive: Receive) -> tuple[str | None, Receive]:
        """Check an unsafe HTTP request's token: ``(reason or None, receive)``. Pass the
        returned ``receive`` on to the app: it replays any form body read here."""
        if scope["type"] != "http" or scope.get("method", "GET").upper() in SAFE_METHODS:
            return None, receive
        expected = self.cookie_token(scope)
        if expected is None:
            return _NO_COOKIE, receive
        headers = _header_values(scope, self.header_name.lower().encode("latin-1"))
        if headers:
            sent: str | None = headers[0].strip()
        else:
            sent, problem, receive = await self._form_token(scope, receive)
            if problem is not None:
                return problem, receive
        if sent is None:
            return self._explain(_NO_TOKEN), receive
        if not self.matches(sent, expected):
            return _WRONG_TOKEN, receive
        return None, receive

    def _explain(self, reason: str) -> str:
        return reason.format(header=self.header_name, field=self.field_name)

    async def _form_token(
        self, scope: Scope, receive: Receive
    ) -> tuple[str | None, str | None, Receive]:
        content_types = _header_values(scope, b"content-type")
        if len(content_types) != 1:
            return None, None, receive
        header = _MimeHeader()
        header["content-type"] = content_types[0]
        content_type = header.get_content_type()
        if content_type not in _FORM_TYPES:
            return None, None, receive
        boundary = header.get_param("boundary")
        multipart = content_type == "multipart/form-data"
        if multipart and (not isinstance(boundary, str) or not boundary):
            return None, None, receive
        chunks: list[bytes] = []
        size = 0
        more_body = True
        token: str | None = None
        while more_body:
            message = await receive()
            if message["type"] != "http.request":
                return None, _DISCONNECTED, receive
            chunk = bytes(message.get("body", b""))
            more_body = bool(message.get("more_body", False))
            chunks.append(chunk)
            size += len(chunk)
            if multipart:
                body = b"".join(chunks)
                token = _multipart_field(body, str(boundary).encode("latin-1"), self.field_name)
                if token is not None:
                    break
            if size > self.max_form_bytes:
                problem = self._explain(_FORM_TOO_LARGE)
                return None, problem, _replay(b"".join(chunks), more_body, receive)
        body = b"".join(chunks)
        if not multipart:
            token = _urlencoded_field(body, self.field_name)
        return token, None, _replay(body, more_body, receive)


def _urlencoded_field(body: bytes, name: str) -> str | None:
    try:
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True, max_num_fields=10_000)
    except ValueError:
        return None
    return next((value for key, value in pairs if key == name), None)


def _multipart_field(body: bytes, boundary: bytes, name: str) -> str | None:
    """The value of the first complete part named ``name`` in (a prefix of) a multipart
    body, or ``None``. A wrong parse can only refuse a request, never admit one: whatever
    is found must still equal the signed cookie."""
    delimiter = b"--" + boundary
    start = body.find(delimiter)
    while start != -1:
        head_start = start + len(delimiter)
        if body[head_start : head_start + 2] != b"\r\n":
            return None  # the closing delimiter, or not received yet
        head_end = body.find(b"\r\n\r\n", head_start)
        if head_end == -1:
            return None
        end = body.find(b"\r\n" + delimiter, head_end + 4)
        if end == -1:
            return None
        if _part_name(body[head_start + 2 : head_end].split(b"\r\n")) == name:
            return body[head_end + 4 : end].decode("utf-8", "replace")
        start = end + 2
    return None


def _part_name(header_lines: Iterable[bytes]) -> str | None:
    for line in header_lines:
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == "content-disposition":
            header = _MimeHeader()
            header["content-disposition"] = value.strip()
            name = header.get_param("name", header="content-disposition")
            return name if isinstance(name, str) else None
    return None


def _replay(body: bytes, more_body: bool, receive: Receive) -> Receive:
    """A ``receive`` that first gives back the body already read, then continues."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": more_body}
        return await receive()

    return replay


class _TokenState:
    """Per request: the token the page should embed, and whether its cookie must be set."""

    def __init__(self, tokens: CSRFTokens, current: str | None) -> None:
        self.tokens = tokens
        self.current = current
        self.issued = False

    def token(self) -> str:
        if self.current is None:
            self.current = self.tokens.new_token()
            self.issued = True
        return self.current

    def masked(self) -> str:
        return self.tokens.masked(self.token())


class HasScope(Protocol):
    """Anything carrying an ASGI scope: a Starlette ``Request`` or ``WebSocket``."""

    @property
    def scope(self) -> MutableMapping[str, Any]: ...


def csrf_token(connection: HasScope) -> str:
    """The CSRF token for a form on this page (``<input type="hidden" name="csrf_token"
    value="{{ csrf_token(request) }}">``) or a ``<meta>`` tag that scripts copy into the
    ``X-CSRF-Token`` header; sets the token cookie if the client has none.

    Masked afresh on every call (so it differs each time; all of them are valid for this
    client's cookie). Needs ``CSRFMiddleware(app, tokens=CSRFTokens(secret))``.
    """
    state = connection.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(state, _TokenState):
        raise RuntimeError(
            "csrf_token() needs CSRF tokens enabled: add "
            "app.add_middleware(CSRFMiddleware, tokens=CSRFTokens(secret))"
        )
    return state.masked()


class CSRFMiddleware:
    """Refuse cross-site unsafe requests (and websocket handshakes) with a 403, and check
    form tokens when ``tokens`` is given.

    >>> app.add_middleware(CSRFMiddleware)
    >>> app.add_middleware(CSRFMiddleware, trusted_origins=["https://admin.example.com"])
    >>> app.add_middleware(CSRFMiddleware, tokens=CSRFTokens(settings.csrf_secret))

    The checks are :class:`CSRFPolicy`'s; safe methods (GET, HEAD, OPTIONS, TRACE) always
    pass, so they must not change anything. Non-browser clients, which send neither
    ``Origin`` nor ``Sec-Fetch-Site``, pass the origin check; with ``tokens`` they too must
    send the token on unsafe requests.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_origins: Sequence[str] = (),
        tokens: CSRFTokens | None = None,
    ) -> None:
        if tokens is not None and not isinstance(tokens, CSRFTokens):
            raise TypeError(f"tokens must be a CSRFTokens, got {type(tokens).__name__}")
        self.app = app
        self.policy = CSRFPolicy(trusted_origins=trusted_origins)
        self.tokens = tokens

    @classmethod
    def documented_errors(
        cls, options: Mapping[str, Any]
    ) -> list[tuple[str, frozenset[str] | None, str]]:
        """What ``install_error_handlers`` adds to the OpenAPI schema for this middleware:
        the 403 of a refused unsafe request."""
        return [("403", UNSAFE_OPENAPI_METHODS, "Cross-site request refused: csrf")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request, or run the app (setting a newly issued token's cookie)."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = self.policy.refusal(scope)
        if reason is None and self.tokens is not None:
            reason, receive = await self.tokens.refusal(scope, receive)
        if reason is not None:
            _log_refusal(scope, reason)
            if scope["type"] == "websocket":
                await send_websocket_refusal(scope, receive, send, reason)
            else:
                await send_refusal(send, reason)
            return
        if self.tokens is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tokens = self.tokens
        state = _TokenState(tokens, tokens.cookie_token(scope))
        scope.setdefault("state", {})[STATE_KEY] = state

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and state.issued:
                headers = list(message.get("headers", []))
                headers.append(tokens.set_cookie_header(state.token()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)


def _log_refusal(scope: Scope, reason: str) -> None:
    # For the operator who must decide whether an origin belongs in trusted_origins. The
    # Origin is attacker-chosen: logged with repr and cut short, never sent back.
    origins = _header_values(scope, b"origin")
    logger.info(
        "refused a request as cross-site request forgery: %s %r from origin %r: %s",
        scope.get("method", "WEBSOCKET"),
        str(scope.get("path", ""))[:200],
        origins[0][:100] if origins else None,
        reason,
    )
