"""What every HTTP request must show before a route sees it, on the server and on the explorer.

- **Host** in an allow-list (loopback names by default), else 421. DNS rebinding (the class of
  Ollama's CVE-2024-28224): a page on attacker.example points its own name at 127.0.0.1 and
  then reads the local server as if same-origin, but the browser still sends
  `Host: attacker.example`.
- **The API key**, when one is set, on every path but /health: `Authorization: Bearer KEY`,
  or for a page in a browser a cookie, set by opening any page once with `?key=KEY` (then
  redirected to the same page without it, so that the key leaves the address bar). 401 else.
- **Content-Type: application/json** on a POST, else 415: a cross-site form or `fetch` may
  POST `text/plain` without a CORS preflight; JSON needs one, which is never granted.

Every refusal has the OpenAI error body. A pure ASGI middleware, so it covers mounted apps and
leaves streamed answers alone.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlencode

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenmill.deploy.serve.api_error import APIError

LOOPBACK = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = frozenset({"/health"})  # for load balancers and probes, which hold no key
COOKIE = "tokenmill_key"
LOGIN_PARAM = "key"
JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})


def host_name(host: str) -> str:
    """The name in a Host header or an --allowed-host value, without port: '[::1]:8000' -> '::1',
    'Example.com.:80' -> 'example.com'."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    if host.count(":") == 1:  # name:port; more colons is a bare IPv6 address
        host = host.split(":")[0]
    return host.rstrip(".")


def cookie_value(api_key: str) -> str:
    """What the cookie holds: derived from the key, so that the cookie is not the key itself."""
    return hmac.new(api_key.encode(), b"tokenmill browser session", hashlib.sha256).hexdigest()


class Guard:
    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = (), api_key: str | None = None) -> None:
        self.app, self.api_key = app, api_key
        self.allowed_hosts = frozenset(host_name(h) for h in (*LOOPBACK, *allowed_hosts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self.refusal(Request(scope))
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        """The answer to a request that may not go on, or None."""
        headers: Headers = request.headers
        if host_name(headers.get("host", "")) not in self.allowed_hosts:
            return error(APIError(421, "this server does not answer to that Host header; start it with "
                                       "--allowed-host NAME to add a name", code="invalid_host"))
        if self.api_key is not None and request.url.path not in OPEN_PATHS:
            if LOGIN_PARAM in request.query_params and request.method in ("GET", "HEAD"):
                return self.login(request)
            if not self.authorized(request):
                return error(APIError(401, "invalid API key: send it as 'Authorization: Bearer KEY'",
                                      code="invalid_api_key"))
        if request.method in JSON_METHODS:
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                return error(APIError(415, "the request body must be sent as 'Content-Type: application/json'",
                                      code="unsupported_media_type"))
        return None

    def authorized(self, request: Request) -> bool:
        # Constant-time comparisons: the time taken says nothing about how much of a guess was right.
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self.api_key.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), cookie_value(self.api_key).encode())

    def login(self, request: Request) -> Response:
        if not hmac.compare_digest(request.query_params[LOGIN_PARAM].encode(), self.api_key.encode()):
            return error(APIError(401, "invalid API key in ?key=", code="invalid_api_key"))
        rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != LOGIN_PARAM])
        response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
        response.set_cookie(COOKIE, cookie_value(self.api_key), httponly=True, samesite="strict")
        return response


def error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
