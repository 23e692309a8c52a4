"""Per-job event streams in Redis.

A Redis Stream (not pub/sub) per job: a bot that subscribes late, or
reconnects after a blip, reads from the start and misses nothing. Streams
expire on their own once a job is long finished.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.contract import StreamEvent
from shared.fencing import publish_owned

STREAM_TTL = 3600
BLOCK_MS = 1000


def reconnect_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` failed reads in a row: 0.25 s doubling up to 5 s."""
    return min(0.25 * 2 ** (failures - 1), 5.0)


def stream_key(job_id: str) -> str:
    return f"corral:stream:{job_id}"


STREAM_MAXLEN = 20000


def publish(conn: Redis, event: StreamEvent, ttl: int = STREAM_TTL) -> bool:
    """Append ``event``; an event naming its attempt is appended only while that
    attempt owns the turn (False when it was fenced off: the attempt is stale)."""
    key = stream_key(event.job_id)
    if event.attempt:
        return publish_owned(conn, event, key, ttl, STREAM_MAXLEN)
    with conn.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"e": event.model_dump_json(exclude_defaults=True)}, maxlen=STREAM_MAXLEN)
        pipe.expire(key, ttl)
        pipe.execute()
    return True


class _Cursor:
    """Where a reader is in a job's stream; shared by the sync and async readers."""

    def __init__(self, job_id: str, timeout: float | None) -> None:
        self.key = stream_key(job_id)
        self.last = "0-0"
        self.timeout = timeout
        self.idle_since = time.monotonic()
        self.finished = False
        self.owner = ""  # the attempt whose ``started`` came last
        self.superseded: set[str] = set()  # attempts whose events are ignored from now on

    def current(self, event: StreamEvent) -> bool:
        """False for an event of a superseded attempt (a frozen worker that woke up late).

        The worker-side fence (shared/fencing.py) already keeps such events out of the
        stream; this keeps every reader correct even if one slipped in before it.
        """
        if event.attempt and event.attempt in self.superseded:
            return False
        if event.kind == "started" and event.attempt:
            if self.owner and self.owner != event.attempt:
                self.superseded.add(self.owner)
            self.owner = event.attempt
        elif event.kind == "error" and event.retrying and self.owner:
            self.superseded.add(self.owner)  # that attempt is over; the next one starts
            self.owner = ""
        return True

    def take(self, reply: Any) -> list[StreamEvent]:
        """Events from one XREAD reply; an empty reply may mean the wait timed out."""
        if not reply:
            if self.timeout is not None and time.monotonic() - self.idle_since > self.timeout:
                self.finished = True
            return []
        self.idle_since = time.monotonic()
        events = []
        for entry_id, fields in reply[0][1]:
            self.last = entry_id
            event = StreamEvent.model_validate_json(fields.get(b"e", fields.get("e")))
            if not self.current(event):
                continue
            events.append(event)
            if event.final:
                self.finished = True
                break
        return events


def events_so_far(conn: Redis, job_id: str) -> list[StreamEvent]:
    """Every event a reader would have been shown until now, without waiting."""
    cursor = _Cursor(job_id, None)
    reply = conn.xrange(cursor.key)
    return cursor.take([(cursor.key, reply)]) if reply else []


def final_event(conn: Redis, job_id: str) -> StreamEvent | None:
    """The turn's final event, if one was sent: then the turn is over for its readers,
    even if RQ never recorded the job's end (its worker died right after sending it)."""
    shown = events_so_far(conn, job_id)
    return shown[-1] if shown and shown[-1].final else None


def follow(conn: Redis, job_id: str, timeout: float | None = None) -> Iterator[StreamEvent]:
    """Yield a job's events from the first one until its final event.

    ``timeout`` bounds the wait for the *next* event; on expiry the iterator
    simply ends, and the caller decides what silence means.
    """
    cursor = _Cursor(job_id, timeout)
    failures = 0
    while not cursor.finished:
        try:
            reply = conn.xread({cursor.key: cursor.last}, block=BLOCK_MS, count=256)
            failures = 0
        except (RedisConnectionError, RedisTimeoutError):
            # Redis restarting: keep our place in the stream and try again, backing off.
            failures += 1
            time.sleep(reconnect_delay(failures))
            reply = None
        yield from cursor.take(reply)


async def afollow(
    conn: AsyncRedis, job_id: str, timeout: float | None = None
) -> AsyncIterator[StreamEvent]:
    """The asyncio twin of :func:`follow`, for the bots' event loops."""
    cursor = _Cursor(job_id, timeout)
    failures = 0
    while not cursor.finished:
        try:
            reply = await conn.xread({cursor.key: cursor.last}, block=BLOCK_MS, count=256)
            failures = 0
        except (RedisConnectionError, RedisTimeoutError):
            failures += 1  # Redis restarting: keep our place, back off, try again
            await asyncio.sleep(reconnect_delay(failures))
            reply = None
        for event in cursor.take(reply):
            yield event
