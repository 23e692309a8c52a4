"""HTTP plumbing shared by every route: errors, auth, body limits, metrics.

Errors come out as JSON in the dialect of the route that failed: OpenAI
clients parse ``{"error": {"message": ...}}``, Ollama clients ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError

from bots.api.callers import Callers
from bots.api.metrics import ApiMetrics
from bots.api.turns import ApiError, TurnRunner
from shared.contract import CONTEXT_LENGTH_EXCEEDED

log = logging.getLogger("corral.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RUNNER = web.AppKey("runner", TurnRunner)

# Routes anyone may call even when a token is set: the page carries no data
# (the token is typed into it and kept in the browser), and health checks
# usually cannot send credentials.
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/", "/healthz", "/favicon.ico"})

_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(
    path: str, status: int, message: str, kind: str | None = None, code: str = ""
) -> dict[str, Any]:
    if is_openai_path(path):
        error_type = kind or _KINDS.get(status, "server_error")
        # OpenAI names the offending parameter for a too-long prompt; clients key on `code`.
        param = "messages" if code == CONTEXT_LENGTH_EXCEEDED else None
        return {
            "error": {"message": message, "type": error_type, "param": param, "code": code or None}
        }
    return {"error": message}


def json_error(
    request: web.Request, status: int, message: str, kind: str | None = None, code: str = ""
) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(
        error_body(request.path, status, message, kind, code), status=status, headers=headers
    )


def route_name(request: web.Request) -> str:
    """The route template for metrics, so random paths share one series."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None:
        return "unmatched"
    return resource.canonical


def make_middlewares(
    metrics: ApiMetrics, token: str | None, max_body: int, callers: Callers | None = None
) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    # The shared token and corral.yaml's per-caller keys (bots/api/callers.py).
    callers = callers or Callers(token)

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.observe_request(route_name(request), request.method, status)

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return json_error(request, exc.status, exc.message, exc.kind, exc.code)
        except web.HTTPRequestEntityTooLarge:
            return json_error(request, 413, f"request body is larger than {max_body} bytes")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {404: f"no route {request.path}", 405: f"method {request.method} not allowed"}
            return json_error(request, exc.status, message.get(exc.status, exc.reason))
        except RedisConnectionError:
            # Never pass on Redis' own message: it may carry the URL and its password.
            log.warning("Redis unreachable on %s %s", request.method, route_name(request))
            return json_error(request, 503, "the queue is unreachable; try again later")
        except OSError:
            raise  # the client went away; there is nobody to answer
        except Exception:
            # Log the details here; the caller gets no stack trace and no internals.
            log.exception("unhandled error on %s %s", request.method, route_name(request))
            return json_error(request, 500, "internal server error", "server_error")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Check the declared size before reading anything; bodies without a length
        # are held to the same limit by aiohttp's client_max_size while being read.
        if request.content_length is not None and request.content_length > max_body:
            return json_error(request, 413, f"request body is larger than {max_body} bytes")
        public = request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES)
        if not public and not callers.authenticate(request):
            return json_error(request, 401, "missing or invalid bearer token")
        return await handler(request)

    return [count, errors, guard]
