"""What keeps a web page the user visits from driving the server: checks before any route runs.

A browser lets any page send a "simple" cross-origin POST (`text/plain`, no preflight) and, by
DNS rebinding, lets a page on evil.example reach 127.0.0.1 under its own host name. So:

* `Host` must name an address the server listens on (localhost, 127.0.0.1, [::1] or the bound
  host, with the bound port) or one given with `--allowed-host`; else 421.
* A POST must say `Content-Type: application/json` (which a page can send cross-origin only
  after a CORS preflight); else 415.
* No CORS headers are sent, so no preflight succeeds, unless `--cors-origin ORIGIN` names the
  one origin allowed (starlette's CORSMiddleware then answers for it only).

Each refusal is OpenAI's JSON error shape with one line that names the fix.
"""

from __future__ import annotations

import json

LOOPBACK = ("localhost", "127.0.0.1", "[::1]", "::1")


def allowed_hosts(host: str, port: int, extra: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The `Host` header values accepted: each name, bare and with the bound port."""
    names = {*LOOPBACK, f"[{host}]" if ":" in host and not host.startswith("[") else host, *extra}
    return {n.lower() for n in names} | {f"{n}:{port}".lower() for n in names}


def _error(status: int, message: str) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return status, json.dumps(body).encode()


class Guard:
    """ASGI middleware: the Host and Content-Type checks above (`hosts` None: any Host)."""

    def __init__(self, app, hosts: set[str] | None):
        self.app, self.hosts = app, hosts

    def refusal(self, scope) -> tuple[int, bytes] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "").strip().lower()
        if self.hosts is not None and host not in self.hosts:
            return _error(
                421,
                f"Host '{host}' is not an address this server answers to; "
                "use the address it listens on, or start it with --allowed-host NAME",
            )
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return _error(415, f"the body must be JSON, sent with 'Content-Type: application/json', not '{kind}'")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (refused := self.refusal(scope)) is not None:
            status, body = refused
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
