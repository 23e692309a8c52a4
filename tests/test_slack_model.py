"""One end-to-end Slack test with the real worker and the embedded small model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes.slack_harness import event_body, mention, running_bot
from redis import Redis

from bots.slack.mrkdwn import to_mrkdwn
from shared.contract import StreamEvent
from shared.settings import Settings
from shared.streams import stream_key


def final_texts(conn: Redis) -> list[str]:
    """The `done` texts the worker published, read straight from its event streams."""
    texts = []
    for key in conn.scan_iter(match=stream_key("*")):
        for _, fields in conn.xrange(key):
            event = StreamEvent.model_validate_json(fields[b"e"])
            if event.kind == "done":
                texts.append(event.text)
    return texts


@pytest.mark.model
def test_mention_answered_by_the_real_worker(
    settings: Settings, redis_url: str, redis_conn: Redis, worker_proc: Any
) -> None:
    async def main() -> None:
        async with running_bot(settings, redis_url) as bot:
            reply = await bot.send_event(event_body(mention("Say hello in one sentence.")))
            assert reply.status == 200

            def answered() -> list[str] | None:
                done = final_texts(redis_conn)
                return done or None

            # The done event, then the writer's final edit that follows it.
            done = await bot.fake.wait_for(answered, timeout=120, poll=0.2)
            expected = to_mrkdwn(done[0])
            texts = await bot.fake.wait_for(
                lambda: (
                    [m.text for m in bot.fake.bot_messages("C1", "1700000000.000100")]
                    if "\n".join(m.text for m in bot.fake.bot_messages("C1")) == expected
                    else None
                ),
                timeout=30,
            )
            assert texts == [expected] and expected.strip()

    asyncio.run(main())
