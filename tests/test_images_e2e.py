"""End to end: a picture posted in Discord or Slack, through the real client library, real
Redis/RQ and a real worker process — a vision model sees it; a text-only model says it can't."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from fakes.discord_harness import running_bot as running_discord
from fakes.discord_server import BOT_ID, FakeDiscord
from fakes.slack_harness import event_body, mention
from fakes.slack_harness import running_bot as running_slack
from PIL import Image
from redis import Redis

from bots.discord.settings import DiscordSettings
from bots.slack.mrkdwn import to_mrkdwn
from bots.splitting import split_message
from shared.contract import StreamEvent, conversation_key
from shared.history import ConversationStore
from shared.images import load_image
from shared.settings import Settings
from shared.streams import stream_key

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

CHANNEL = 800_000_000_000_000_010


def png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), color).save(buf, "PNG")
    return buf.getvalue()


def finals(conn: Redis) -> list[StreamEvent]:
    """Every job's final event, read straight from the worker's event streams."""
    found = []
    for key in conn.scan_iter(match=stream_key("*")):
        for _, fields in conn.xrange(key):
            event = StreamEvent.model_validate_json(fields[b"e"])
            if event.final:
                found.append(event)
    return found


def test_discord_picture_reaches_a_vision_model(
    settings: Settings, redis_conn: Redis, start_worker: Any, tiny_mllama_dir: Path
) -> None:
    start_worker(model=str(tiny_mllama_dir), max_new_tokens=8)
    picture = png("red")
    config = DiscordSettings(edit_interval=0.2, _env_file=None)  # type: ignore[call-arg]

    async def scenario() -> None:
        async with running_discord(settings, config, FakeDiscord()) as (fake, _bot):
            question = await fake.user_says(
                CHANNEL, f"<@{BOT_ID}> what colour is this?", files={"red.png": picture}
            )
            thread = int(question["id"])
            [done] = await fake.wait_for(lambda: finals(redis_conn), timeout=120)
            assert done.kind == "done" and done.text.strip(), done.error
            expected = split_message(done.text, 2000)
            shown = lambda: [m["content"] for m in fake.bot_messages(thread)]  # noqa: E731
            await fake.wait_for(lambda: shown()[-len(expected) :] == expected, timeout=30)

            key = conversation_key("discord", str(CHANNEL), str(thread))
            [asked, _answer] = ConversationStore(redis_conn, 60).load(key)
            assert asked.content == "what colour is this?"
            [ident] = asked.images  # the worker kept the picture with the question
            assert load_image(redis_conn, ident) == picture

    asyncio.run(scenario())


def test_slack_picture_to_a_text_only_model_is_answered_with_a_note(
    settings: Settings, redis_url: str, redis_conn: Redis, worker_proc: Any
) -> None:
    async def scenario() -> None:
        async with running_slack(settings, redis_url) as bot:
            url = bot.fake.file_url("cat", png("gray"))
            shared = {"name": "cat.png", "mimetype": "image/png", "size": 10**3}
            event = mention("", files=[{**shared, "url_private_download": url}])
            assert (await bot.send_event(event_body(event))).status == 200
            [done] = await bot.fake.wait_for(lambda: finals(redis_conn), timeout=120, poll=0.2)
            assert done.kind == "done" and "can't see images" in done.text
            assert "cat.png" in done.text
            await bot.fake.wait_for(
                lambda: to_mrkdwn(done.text) in [m.text for m in bot.fake.bot_messages("C1")],
                timeout=30,
            )

    asyncio.run(scenario())
