"""One line for each mistake an operator meets first, saying what to change.

A taken port names the port and the setting that moves it; an unreachable Redis names
the URL (without its password) and what to start. ``corral`` prints these instead of a
traceback (``-v`` shows it) and exits non-zero.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from shared.settings import Settings, load_settings


class OperatorError(RuntimeError):
    """A mistake in the set-up, said in one line; the process exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def shown_url(url: str) -> str:
    """``url`` without its password, fit for a terminal or a log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_unreachable(settings: Settings, url: str) -> OperatorError:
    if settings.redis_url:
        hint = (
            "start Redis there (e.g. `redis-server`, or `docker compose up -d redis`), "
            "or unset REDIS_URL so `corral run` starts a private one"
        )
    else:
        hint = (
            "nothing is running there: `corral run` starts a stack with its own chat, or set "
            "REDIS_URL to a running stack's Redis (`corral run` prints its private one)"
        )
    return OperatorError(f"cannot reach Redis at {shown_url(url)} (REDIS_URL): {hint}")


def require_redis(settings: Settings, url: str) -> None:
    """Fail in one line before a slow start (loading a model) if Redis is not there."""
    from redis import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except RedisError as exc:
        raise redis_unreachable(settings, url) from exc
    finally:
        client.close()


def port_in_use(host: str, port: int, setting: str) -> OperatorError:
    return OperatorError(
        f"port {port} on {host} is already in use (another corral api, or Ollama?): "
        f"stop that program or set {setting} to a free port"
    )


def require_free_port(host: str, port: int, setting: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise port_in_use(host, port, setting) from None
            raise


def address_in_use(command: str) -> OperatorError:
    """The port ``command`` failed to bind (only the API and Slack's HTTP mode listen)."""
    if command == "slack":
        from bots.slack.settings import load_slack_settings

        slack = load_slack_settings()
        return port_in_use(slack.host, slack.port, "CORRAL_SLACK_PORT")
    from bots.api.settings import ApiSettings

    api = ApiSettings()
    return port_in_use(api.host, api.port, "CORRAL_API_PORT")


def explain(exc: Exception, command: str, redis_url: Callable[[], str]) -> int:
    """One line for ``exc`` on stderr; the exit code."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from worker.model_source import ModelUnavailable

    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        exc = address_in_use(command)
    elif isinstance(exc, RedisConnectionError | RedisTimeoutError):
        exc = redis_unreachable(load_settings(), redis_url())
    if isinstance(exc, OperatorError):
        print(f"corral: {exc}", file=sys.stderr)
        return exc.code
    if isinstance(exc, ModelUnavailable):
        print(f"corral: {exc}", file=sys.stderr)
        return 3
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    print(
        f"corral {command}: {type(exc).__name__}: {first} "
        f"(`corral -v {command}` shows the traceback)",
        file=sys.stderr,
    )
    return 1
