"""A Slack mention that arrives while Redis restarts is not dropped.

The real Bolt app behind signed HTTP requests, the fake Slack API, and a real
private redis-server (AOF on) that the test kills and restarts on its data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager

import pytest
from fakes.slack_harness import BotUnderTest, FakeWorker, event_body, mention, running_bot
from redis import Redis

from bots.slack.surface import WORDING
from corral.redis_server import RedisServer
from shared.settings import Settings

ROOT = "1700000000.000100"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(aof=True).start()  # started by this (main) thread: it may restart it
    yield server
    server.close()


def bot_on(own_redis: RedisServer, settings: Settings) -> AbstractAsyncContextManager[BotUnderTest]:
    """The Slack bot on the private Redis the test restarts."""
    private = settings.model_copy(update={"redis_url": own_redis.url})
    return running_bot(private, own_redis.url)


def test_a_mention_during_a_short_redis_restart_is_queued_and_answered(
    settings: Settings, own_redis: RedisServer
) -> None:
    async def main() -> None:
        async with bot_on(own_redis, settings) as bot:
            await bot.send_event(event_body(mention("warm up", ts="1700000000.000001")))
            warm = FakeWorker(Redis.from_url(own_redis.url))
            await warm.take()  # the bot's connections are open before Redis goes away
            own_redis.kill()
            reply = await bot.send_event(event_body(mention("rotate logs?", ts=ROOT)))
            assert reply.status == 200  # acked at once, as Slack requires
            await asyncio.sleep(1.5)
            own_redis.start()  # on the same port and data
            worker = FakeWorker(Redis.from_url(own_redis.url))
            job_id, turn = await worker.take(timeout=15)
            assert turn.text == "rotate logs?"
            worker.answer(job_id, "Rotated.")
            await bot.fake.wait_for(
                lambda: [m.text for m in bot.fake.bot_messages("C1", ROOT)] == ["Rotated."], 15
            )
            assert not [c for c in bot.fake.calls if WORDING.queue_down in str(c.args)]

    asyncio.run(main())


def test_a_mention_while_redis_stays_down_gets_one_line(
    settings: Settings, own_redis: RedisServer
) -> None:
    async def main() -> None:
        async with bot_on(own_redis, settings) as bot:
            own_redis.kill()
            sent = time.monotonic()
            reply = await bot.send_event(event_body(mention("rotate logs?", ts=ROOT)))
            assert reply.status == 200
            [line] = await bot.fake.wait_for(
                lambda: [m.text for m in bot.fake.bot_messages("C1", ROOT)], 20
            )
            waited = time.monotonic() - sent
            assert line == WORDING.queue_down
            assert 3 < waited < 15, waited  # it retried a few seconds, then said so
            await asyncio.sleep(1)
            assert len(bot.fake.bot_messages("C1", ROOT)) == 1
            own_redis.start()  # for the harness's clean-up

    asyncio.run(main())
