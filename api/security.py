"""Who may talk to the server, from where, about which repositories, with how many bytes.

* The server binds loopback by default; binding anything else is refused without a token
  (``check_bind``). With a token set, every ``/api`` call and the WebSocket need it, as
  ``Authorization: Bearer <token>`` or ``?token=<token>`` (a browser cannot set headers on a
  WebSocket or a download link).
* A browser page from another site must not drive the server: a WebSocket whose ``Origin`` is
  not this host is refused, and so is a cross-site ``POST``. On loopback the ``Host`` header must
  name loopback too, which defeats DNS rebinding.
* Repositories are limited to roots (``repo_roots``): ``ORCH_REPO_ROOTS`` when set, else the
  server's working directory and the user's home directory. A path is refused if it leaves
  every root, whether lexically (``..``) or through a symlink.
* Request bodies are bounded by ``max_request_bytes``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from actors.config import Settings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class BindRefused(Exception):
    """The server would listen beyond loopback without a token."""


class RepoRefused(Exception):
    """A repository path the server will not analyse; ``code`` is stable for clients."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str) -> None:
    """Refuse to listen beyond loopback without a token."""
    if not is_loopback(host) and not token:
        raise BindRefused(
            f"refusing to listen on {host}: binding beyond loopback needs a token "
            "(set ORCH_TOKEN, then clients send 'Authorization: Bearer <token>')"
        )


# --- repositories ------------------------------------------------------------------------


def repo_roots(settings: Settings, *, cwd: str | None = None, home: str | None = None) -> tuple[Path, ...]:
    """The directories repositories must live under, resolved (symlinks followed).

    ``ORCH_REPO_ROOTS`` when set; otherwise the server's working directory, then the user's
    home. The first root is the default repository the pane offers.
    """
    if settings.repo_roots:
        raw: Iterable[str] = settings.repo_roots
    else:
        raw = [cwd or os.getcwd(), home or str(Path.home())]
    roots: list[Path] = []
    for r in raw:
        p = Path(os.path.expanduser(r)).resolve()
        if p not in roots:
            roots.append(p)
    return tuple(roots)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the filesystem, say
        return False


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _written_inside(path: Path, roots: tuple[Path, ...]) -> bool:
    """Whether ``path``, as written, lies under a root by any of the root's names: a root
    given through a link (``/tmp`` on macOS is ``/private/tmp``) is resolved in ``roots``."""
    if any(_inside(path, r) for r in roots):
        return True
    for ancestor in (path, *path.parents):
        try:
            if Path(os.path.realpath(ancestor)) in roots:
                return True
        except (OSError, ValueError):
            continue
    return False


def resolve_repo(repo: str, roots: tuple[Path, ...]) -> str:
    """The real path of ``repo`` if it is a directory under one of ``roots``; else ``RepoRefused``.

    A relative path is taken relative to the first root under which it exists (the first root
    if none). The path is checked twice: as written (after ``..`` is folded) and after
    symlinks are followed, so neither route leaves the roots.
    """
    if not repo or not repo.strip():
        raise RepoRefused("no repository given", "repo_required")
    if "\x00" in repo:
        raise RepoRefused("the repository path contains a NUL byte", "repo_invalid")
    if not roots:
        raise RepoRefused("no repository roots are configured (ORCH_REPO_ROOTS)", "repo_outside_roots")
    expanded = Path(os.path.expanduser(repo.strip()))
    if not expanded.is_absolute():
        candidates = [root / expanded for root in roots]
        expanded = next((c for c in candidates if _exists(c)), candidates[0])
    lexical = Path(os.path.normpath(expanded))
    allowed = ", ".join(str(r) for r in roots)
    if not _written_inside(lexical, roots):
        raise RepoRefused(
            f"{repo} is outside the allowed repository roots ({allowed})", "repo_outside_roots"
        )
    try:
        real = lexical.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise RepoRefused(f"no such directory: {repo}", "repo_not_found") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission error
        raise RepoRefused(f"cannot open {repo}: {exc}", "repo_not_found") from None
    if not any(_inside(real, r) for r in roots):
        raise RepoRefused(
            f"{repo} leads outside the allowed repository roots through a symlink ({allowed})",
            "repo_outside_roots",
        )
    if not real.is_dir():
        raise RepoRefused(f"{repo} is not a directory", "repo_not_directory")
    return str(real)


# --- the ASGI guard -------------------------------------------------------------------------


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _host_name(host_header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8765`` → ``::1``)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def tidy_origin(origin: str) -> str:
    """An origin as browsers send it in ``Origin``: lower case, no trailing slash."""
    return origin.rstrip("/").lower()


# The API's OpenAPI description and the docs page that reads it: what any client may call,
# no data of any run.
_DESCRIPTION = frozenset({"/api/openapi.json", "/api/docs"})


class Guard:
    """ASGI middleware: token, Host/Origin checks and the body-size bound, before any route.

    Static files of the pane are public (they hold no data); ``/api`` and ``/ws`` are not, but
    for the API's description and its docs page (the page fetches the description without the
    token it was opened with).
    """

    def __init__(
        self, app, *, token: str, loopback: bool, max_body: int, allow_origins: Iterable[str] = ()
    ):
        self.app = app
        self.token = token
        self.loopback = loopback
        self.max_body = max_body
        self.allow_origins = frozenset(map(tidy_origin, allow_origins))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        path = scope.get("path", "")
        protected = (path.startswith("/api") or path.startswith("/ws")) and path not in _DESCRIPTION
        host = headers.get("host", "")

        refusal = self._refusal(scope, headers, host, protected)
        if refusal is not None:
            status, code, message = refusal
            return await _refuse(scope, receive, send, status, code, message)

        if scope["type"] == "http" and protected:
            declared = headers.get("content-length")
            if declared is not None:
                try:
                    size = int(declared)
                except ValueError:
                    return await _refuse(scope, receive, send, 400, "bad_request", "bad Content-Length")
                if size > self.max_body:
                    return await _refuse(
                        scope, receive, send, 413, "body_too_large",
                        f"request body of {size} bytes exceeds the limit of {self.max_body}",
                    )
            return await self._bounded(scope, receive, send)
        return await self.app(scope, receive, send)

    def _refusal(self, scope, headers, host, protected) -> tuple[int, str, str] | None:
        if self.loopback and host and not is_loopback(_host_name(host)):
            # A loopback server answers only to loopback names: a page that rebinds its own
            # DNS name to 127.0.0.1 still sends its own name here.
            return 421, "bad_host", f"this server answers only to loopback names, not {host!r}"
        if not protected:
            return None
        origin = headers.get("origin")
        unsafe = scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD", "OPTIONS")
        if origin and unsafe and not self._origin_ok(origin, host):
            return 403, "bad_origin", f"requests from {origin} are not allowed (same host only)"
        if scope.get("method") == "OPTIONS":
            return None  # a CORS preflight carries no credentials
        if self.token and not self._has_token(scope, headers):
            return 401, "unauthorized", "a token is required: 'Authorization: Bearer <token>' or ?token="
        return None

    def _origin_ok(self, origin: str, host: str) -> bool:
        origin = tidy_origin(origin)
        return origin in self.allow_origins or urlsplit(origin).netloc == host.lower()

    def _has_token(self, scope, headers) -> bool:
        given = ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[0]
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    async def _bounded(self, scope, receive, send):
        # Bodies here are small JSON documents: read the whole body first (refusing it as soon
        # as it passes the bound), then hand it to the app in one piece.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                return await _send_json(
                    send, 413, "body_too_large",
                    f"request body exceeds the limit of {self.max_body} bytes",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send, status: int, code: str, message: str) -> None:
    body = _error_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _refuse(scope, receive, send, status: int, code: str, message: str) -> None:
    if scope["type"] == "websocket":
        # Refuse the handshake; the ASGI server answers it with an HTTP 403. The close reason
        # carries the stable code for clients that read it.
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": f"{code}: {message}"[:120]})
        return
    await _send_json(send, status, code, message)
