"""What a served model is (family, size, context length, capabilities), kept in Redis.

A worker writes its model's record when it starts (``worker/model_info.py``); the API's
``/api/show`` reads it. Keyed by model name, so every worker of a model writes the same
record and a later release's extra fields pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

MODEL_INFO_KEY = "corral:model-info"  # hash: model name -> JSON record


def write(conn: Redis, name: str, info: dict[str, Any]) -> None:
    conn.hset(MODEL_INFO_KEY, name, json.dumps(info))


async def read(conn: AsyncRedis, name: str) -> dict[str, Any]:
    """The record for ``name``, or {} when no worker of it has written one."""
    raw = await conn.hget(MODEL_INFO_KEY, name)
    try:
        info = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}
