"""Token accounting: prompt and completion tokens per user, channel and model, per day.

Three Redis hashes per UTC day (``corral:usage:<day>:user`` / ``:channel`` /
``:model``), with fields ``<who>:prompt_tokens`` and ``<who>:completion_tokens``
incremented by HINCRBY, so several bots (or workers) can record at once. Users
and channels are named ``<platform>:<id>``. Days expire after ``KEEP_DAYS``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

PREFIX = "corral:usage"
KEEP_DAYS = 90
KINDS = ("user", "channel", "model")
FIELDS = ("prompt_tokens", "completion_tokens")


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def key(day: str, kind: str) -> str:
    return f"{PREFIX}:{day}:{kind}"


@dataclass(frozen=True)
class Tokens:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _increments(
    platform: str, user: str, channel: str, model: str, prompt: int, completion: int
) -> list[tuple[str, str, int]]:
    who = {
        "user": f"{platform}:{user}",
        "channel": f"{platform}:{channel}",
        "model": model or "default",
    }
    out = []
    for kind in KINDS:
        out.append((kind, f"{who[kind]}:prompt_tokens", int(prompt)))
        out.append((kind, f"{who[kind]}:completion_tokens", int(completion)))
    return out


def _queue(pipe: Any, day: str, increments: list[tuple[str, str, int]]) -> None:
    for kind, field, amount in increments:
        pipe.hincrby(key(day, kind), field, amount)
    for kind in KINDS:
        pipe.expire(key(day, kind), KEEP_DAYS * 24 * 3600)


async def arecord(
    conn: AsyncRedis,
    *,
    platform: str,
    user: str,
    channel: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    day: str | None = None,
) -> None:
    increments = _increments(platform, user, channel, model, prompt_tokens, completion_tokens)
    pipe = conn.pipeline(transaction=False)
    _queue(pipe, day or today(), increments)
    await pipe.execute()


def _parse(raw: dict[Any, Any]) -> dict[str, Tokens]:
    counts: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        who, _, which = name.rpartition(":")
        if which in FIELDS:
            counts.setdefault(who, {})[which] = int(value)
    return {who: Tokens(**values) for who, values in sorted(counts.items())}


def read(conn: Redis, kind: str, day: str | None = None) -> dict[str, Tokens]:
    """``{who: Tokens}`` for one kind (user, channel, model) and day."""
    return _parse(conn.hgetall(key(day or today(), kind)))


async def aread(conn: AsyncRedis, kind: str, day: str | None = None) -> dict[str, Tokens]:
    return _parse(await conn.hgetall(key(day or today(), kind)))


async def aused_by(conn: AsyncRedis, platform: str, user: str, day: str | None = None) -> Tokens:
    """One user's tokens today."""
    who = f"{platform}:{user}"
    values = await conn.hmget(key(day or today(), "user"), [f"{who}:{f}" for f in FIELDS])
    prompt, completion = (int(v) if v is not None else 0 for v in values)
    return Tokens(prompt, completion)


def format_tokens(tokens: Tokens) -> str:
    return f"{tokens.total:,} tokens ({tokens.prompt_tokens:,} prompt + {tokens.completion_tokens:,} answer)"  # noqa: E501
