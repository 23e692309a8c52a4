"""Who is calling the HTTP API, and what the team config lets them do.

With per-caller keys in corral.yaml (``api.keys``), each Bearer key names a user (and
roles): API turns then go through the same permissions, daily token quota and usage
records as the bots' turns, under platform ``api``. ``CORRAL_API_TOKEN`` stays the
one-key case (user ``api``); with neither, the API is open (loopback by default).
Keys are compared as SHA-256 digests in constant time, every entry checked, and never
logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from redis.asyncio import Redis as AsyncRedis

from bots.api.turns import ApiError
from shared import usage
from shared.contract import Usage
from shared.permissions import Actor, decide
from shared.team_config import ConfigWatcher, Permissions, TeamConfig, config_path

log = logging.getLogger("corral.api")

PLATFORM = "api"


@dataclass(frozen=True)
class Caller:
    user: str = "api"
    roles: frozenset[str] = field(default_factory=frozenset)
    name: str = ""  # the key's name in corral.yaml ("" for the shared token / no auth)
    keyed: bool = False  # identified by a per-caller key


CALLER_KEY = web.RequestKey("caller", Caller)


class Callers:
    """Reads the keys from corral.yaml (re-read when it changes) and checks requests."""

    def __init__(self, token: str | None, watcher: ConfigWatcher | None = None) -> None:
        self.token = hashlib.sha256(token.encode()).digest() if token else None
        self.watcher = watcher or ConfigWatcher(config_path())

    @property
    def config(self) -> TeamConfig:
        self.watcher.poll()  # cheap: one stat of corral.yaml
        return self.watcher.config

    @property
    def required(self) -> bool:
        return self.token is not None or bool(self.config.api.keys)

    def identify(self, bearer: str) -> Caller | None:
        """The caller a Bearer key belongs to, or None. Every key is compared, each in
        constant time, so timings tell nothing about which (if any) nearly matched."""
        digest = hashlib.sha256(bearer.encode()).digest()
        found: Caller | None = None
        for key in self.config.api.keys:
            if hmac.compare_digest(digest, key.digest()) and found is None:
                found = Caller(key.user, frozenset(key.roles), key.name, keyed=True)
        if self.token is not None and hmac.compare_digest(digest, self.token) and found is None:
            found = Caller()
        return found

    def authenticate(self, request: web.Request) -> bool:
        """Store the request's caller; False when a key is required and this is none."""
        if not self.required:
            request[CALLER_KEY] = Caller()
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        caller = self.identify(given.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            return False
        request[CALLER_KEY] = caller
        return True


def caller_of(request: web.Request) -> Caller:
    return request.get(CALLER_KEY) or Caller()  # public routes are not authenticated


def turn_user(request: web.Request, claimed: str = "") -> str:
    """The user a turn runs as: the key's user; otherwise what the caller says, if any."""
    caller = caller_of(request)
    return caller.user if caller.keyed else claimed


def _person_rules(config: TeamConfig) -> Permissions:
    """The permissions minus the place rules (channels, workspaces): the API has none."""
    perms = config.permissions
    no_places: dict[str, list[str]] = {"channels": [], "guilds": []}
    return perms.model_copy(
        update={
            "allow": perms.allow.model_copy(update=no_places),
            "block": perms.block.model_copy(update=no_places),
        }
    )


Spent = Callable[[Any], None]  # give it the TurnHandle, or a Usage


@asynccontextmanager
async def accounted(
    request: web.Request, redis: AsyncRedis, model: str | None
) -> AsyncIterator[Spent]:
    """Refuse a keyed caller the team config does not allow (403) or whose daily quota is
    used up (429); afterwards record what its turn used. Yields ``spent(handle)``."""
    caller = caller_of(request)
    spent: list[Any] = []
    if not caller.keyed:
        yield spent.append
        return
    config = request.app[CALLERS].config
    verdict = decide(Actor(PLATFORM, caller.user, roles=caller.roles), _person_rules(config))
    if not verdict.allowed:
        log.info("api key %s refused: %s", caller.name, verdict.reason)
        raise ApiError(403, config.permissions.refusal_message, "permission_denied")
    limit = config.limits.daily_tokens_per_user
    if limit:
        used = await usage.aused_by(redis, PLATFORM, caller.user)
        if used.total >= limit:
            raise ApiError(
                429,
                f"daily allowance of {limit:,} tokens used ({used.total:,} today); "
                "it resets at midnight UTC",
                "rate_limit_exceeded",
            )
    try:
        yield spent.append
    finally:
        for item in spent:
            turn_usage = item if isinstance(item, Usage) else item.answer.usage
            # The model that answered; a turn for the default model names none.
            answered = "" if isinstance(item, Usage) else item.answer.model
            if not isinstance(item, Usage) and not item.finished:
                continue  # cancelled or failed: the worker's usage never arrived
            try:
                await usage.arecord(
                    redis,
                    platform=PLATFORM,
                    user=caller.user,
                    channel=PLATFORM,
                    model=answered or model or config.models.default or "default",
                    prompt_tokens=turn_usage.prompt_tokens,
                    completion_tokens=turn_usage.completion_tokens,
                )
            except Exception:  # accounting must never break an answer
                log.warning("could not record API usage", exc_info=True)


CALLERS = web.AppKey("callers", Callers)
