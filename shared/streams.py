"""Per-job event streams in Redis.

A Redis Stream (not pub/sub) per job: a bot that subscribes late, or
reconnects after a blip, reads from the start and misses nothing. Streams
expire on their own once a job is long finished.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from .contract import StreamEvent

STREAM_TTL = 3600
BLOCK_MS = 1000


def stream_key(job_id: str) -> str:
    return f"corral:stream:{job_id}"


def publish(conn: Redis, event: StreamEvent, ttl: int = STREAM_TTL) -> None:
    key = stream_key(event.job_id)
    with conn.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"e": event.model_dump_json(exclude_defaults=True)}, maxlen=20000)
        pipe.expire(key, ttl)
        pipe.execute()


def _decode(fields: dict[Any, Any]) -> StreamEvent:
    raw = fields.get(b"e", fields.get("e"))
    return StreamEvent.model_validate_json(raw)


def follow(conn: Redis, job_id: str, timeout: float | None = None) -> Iterator[StreamEvent]:
    """Yield a job's events from the first one until its final event.

    ``timeout`` bounds the wait for the *next* event; on expiry the iterator
    simply ends, and the caller decides what silence means.
    """
    import time

    key = stream_key(job_id)
    last = "0-0"
    idle_since = time.monotonic()
    while True:
        reply = conn.xread({key: last}, block=BLOCK_MS, count=256)
        if not reply:
            if timeout is not None and time.monotonic() - idle_since > timeout:
                return
            continue
        idle_since = time.monotonic()
        for entry_id, fields in reply[0][1]:
            last = entry_id
            event = _decode(fields)
            yield event
            if event.final:
                return


async def afollow(
    conn: AsyncRedis, job_id: str, timeout: float | None = None
) -> AsyncIterator[StreamEvent]:
    """The asyncio twin of :func:`follow`, for the bots' event loops."""
    import time

    key = stream_key(job_id)
    last = "0-0"
    idle_since = time.monotonic()
    while True:
        reply = await conn.xread({key: last}, block=BLOCK_MS, count=256)
        if not reply:
            if timeout is not None and time.monotonic() - idle_since > timeout:
                return
            continue
        idle_since = time.monotonic()
        for entry_id, fields in reply[0][1]:
            last = entry_id
            event = _decode(fields)
            yield event
            if event.final:
                return
