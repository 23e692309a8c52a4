"""The few Redis keys the Slack bot owns: delivery de-duplication and thread membership.

Slack re-delivers an event it thinks we missed (``X-Slack-Retry-Num``), and one
message can arrive twice under different event ids (``app_mention`` and
``message.channels`` for a mention inside a thread). ``SET NX EX`` makes the
first delivery win across restarts and across several bot processes.
"""

from __future__ import annotations

from redis.asyncio import Redis as AsyncRedis

PREFIX = "corral:slack"


class SlackState:
    def __init__(self, redis: AsyncRedis, dedup_ttl: int, thread_ttl: int) -> None:
        self.redis = redis
        self.dedup_ttl = dedup_ttl
        self.thread_ttl = thread_ttl

    async def claim_event(self, event_id: str) -> bool:
        """True for the first delivery of this event id; False for a retry."""
        if not event_id:
            return True  # nothing to key on (slash commands are not retried by Slack)
        return await self._claim(f"{PREFIX}:event:{event_id}")

    async def claim_message(self, channel: str, ts: str) -> bool:
        """True the first time we set out to answer this message."""
        return await self._claim(f"{PREFIX}:msg:{channel}:{ts}")

    async def join_thread(self, channel: str, thread_ts: str) -> None:
        """Remember that we answered in this thread, so follow-ups need no mention."""
        await self.redis.set(f"{PREFIX}:thread:{channel}:{thread_ts}", 1, ex=self.thread_ttl)

    async def in_thread(self, channel: str, thread_ts: str) -> bool:
        return bool(await self.redis.exists(f"{PREFIX}:thread:{channel}:{thread_ts}"))

    async def _claim(self, key: str) -> bool:
        return bool(await self.redis.set(key, 1, nx=True, ex=self.dedup_ttl))
