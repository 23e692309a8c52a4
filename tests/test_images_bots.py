"""Images attached in Discord and Slack: checked, stored in Redis for the worker, or left
out with a note in the prompt and one hint line for the user (fake platforms, real Redis/RQ)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fakes.discord_harness import StandInWorker
from fakes.discord_harness import running_bot as running_discord
from fakes.discord_server import BOT_ID, FakeDiscord
from fakes.slack_harness import BotUnderTest, FakeWorker, event_body, mention, message
from fakes.slack_harness import running_bot as running_slack
from PIL import Image
from redis import Redis
from rq.job import Job
from rq.rate_limit import RateLimitRegistry

from bots.discord.settings import DiscordSettings
from bots.slack.settings import SlackSettings
from shared.contract import IMAGE_ONLY_TEXT, Turn
from shared.images import load_image
from shared.settings import Settings
from shared.team_config import ConfigWatcher

pytestmark = pytest.mark.timeout(40)

MENTION = f"<@{BOT_ID}>"
CHANNEL = 800_000_000_000_000_010
UNSUPPORTED = "only PNG, JPEG, GIF and WebP images are supported"


def png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    if size == 8:
        Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    else:  # noise does not compress: a file of about 3 * size² bytes
        Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buf, "PNG")
    return buf.getvalue()


def watcher_for(tmp_path: Path, text: str) -> ConfigWatcher:
    path = tmp_path / "corral.yaml"
    path.write_text(text)
    return ConfigWatcher(path, interval=0.05)


SMALL_IMAGES = "limits:\n  image_max_bytes: 1000\n"


def image_of(redis_conn: Redis, turn: Turn, name: str) -> bytes | None:
    [found] = [a for a in turn.attachments if a.name == name]
    assert found.image_id, f"{name} was not stored"
    return load_image(redis_conn, found.image_id)


# Discord


def discord_config() -> DiscordSettings:
    return DiscordSettings(edit_interval=0.1, _env_file=None)  # type: ignore[call-arg]


def contents(fake: FakeDiscord, channel_id: int) -> list[str]:
    return [m["content"] for m in fake.bot_messages(channel_id)]


def test_discord_image_is_stored_and_a_text_file_still_quoted(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    picture = png()

    async def scenario() -> None:
        async with running_discord(settings, discord_config(), FakeDiscord()) as (fake, _bot):
            files = {"photo.png": picture, "notes.txt": b"hello there"}
            kinds = {"photo.png": "image/png", "notes.txt": "text/plain"}
            q = await fake.user_says(
                CHANNEL, f"{MENTION} what is this?", files=files, content_types=kinds
            )
            job_id, turn = await worker.take()
            worker.answer(job_id, "A red square.")
            thread = int(q["id"])
            await fake.wait_for(lambda: contents(fake, thread) == ["A red square."])

            assert image_of(redis_conn, turn, "photo.png") == picture
            photo = turn.attachments[0]
            assert (photo.content_type, photo.size) == ("image/png", len(picture))
            assert "photo.png" not in turn.text  # no prompt block for an accepted image
            assert turn.text == "what is this?\n\nAttached file notes.txt:\n```\nhello there\n```"
            assert turn.attachments[1].image_id == ""

    asyncio.run(scenario())


def test_discord_image_only_message(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_discord(settings, discord_config(), FakeDiscord()) as (fake, _bot):
            await fake.user_says(CHANNEL, MENTION, files={"cat.png": png()})
            job_id, turn = await worker.take()
            worker.answer(job_id, "ok")
            assert turn.text == IMAGE_ONLY_TEXT
            assert image_of(redis_conn, turn, "cat.png") == png()

            # Not only images: the old wording stays.
            await fake.user_says(
                CHANNEL, MENTION, files={"a.png": png(), "b.log": b"boom"}, content_types={}
            )
            job_id, turn = await worker.take()
            worker.answer(job_id, "ok")
            assert turn.text.startswith("Please look at the attached file.\n\nAttached file b.log")

    asyncio.run(scenario())


def test_discord_oversized_and_fake_images_are_left_out_and_said(
    settings: Settings, redis_conn: Redis, tmp_path: Path
) -> None:
    worker = StandInWorker(redis_conn)
    big = png(64)

    async def scenario() -> None:
        watcher = watcher_for(tmp_path, SMALL_IMAGES)
        async with running_discord(settings, discord_config(), FakeDiscord(), watcher) as (
            fake,
            _bot,
        ):
            files = {"big.png": big, "fake.png": b"not a picture at all", "ok.png": png()}
            kinds = dict.fromkeys(files, "image/png")
            q = await fake.user_says(CHANNEL, f"{MENTION} look", files=files, content_types=kinds)
            thread = int(q["id"])
            job_id, turn = await worker.take()
            size = f"{len(big) / 1000:.0f} kB"
            hint = (
                f"💡 I left out big.png: {size} is over the 1 kB image limit; "
                f"fake.png: {UNSUPPORTED}."
            )
            await fake.wait_for(lambda: hint in contents(fake, thread))
            worker.answer(job_id, "Seen one.")
            await fake.wait_for(lambda: contents(fake, thread) == [hint, "Seen one."])

            assert f"[Attached image big.png: not included, {size} is over" in turn.text
            assert f"[Attached image fake.png: not included, {UNSUPPORTED}]" in turn.text
            assert [bool(a.image_id) for a in turn.attachments] == [False, False, True]
            assert image_of(redis_conn, turn, "ok.png") == png()
            # The oversized file was judged by its declared size, never downloaded.
            fetched = [path.split("/", 1)[1] for path in fake.downloads]
            assert sorted(fetched) == ["fake.png", "ok.png"]

    asyncio.run(scenario())


# Slack


def run_slack(
    settings: Settings,
    redis_url: str,
    scenario: Callable[[BotUnderTest], Awaitable[None]],
    watcher: ConfigWatcher | None = None,
) -> None:
    async def main() -> None:
        slack = SlackSettings(update_interval=0.1, _env_file=None)  # type: ignore[call-arg]
        async with running_slack(settings, redis_url, slack, watcher) as bot:
            await asyncio.wait_for(scenario(bot), 20)

    asyncio.run(main())


def slack_file(bot: BotUnderTest, name: str, data: bytes, mimetype: str = "") -> dict[str, object]:
    item: dict[str, object] = {
        "id": f"F{name}",
        "name": name,
        "size": len(data),
        "url_private_download": bot.fake.file_url(name, data),
    }
    if mimetype:
        item["mimetype"] = mimetype
    return item


def texts_in(bot: BotUnderTest, thread: str) -> list[str]:
    return [m.text for m in bot.fake.bot_messages("C1", thread)]


def test_slack_image_is_stored_and_a_text_file_still_quoted(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)
    picture = png()

    async def scenario(bot: BotUnderTest) -> None:
        files = [
            slack_file(bot, "photo.png", picture, "image/png"),
            slack_file(bot, "app.log", b"ERROR boom\n", "text/plain"),
        ]
        await bot.send_event(event_body(mention("what is this?", ts="4.1", files=files)))
        job_id, turn = await worker.take()
        worker.answer(job_id, "A red square.")
        await bot.fake.wait_for(lambda: texts_in(bot, "4.1") == ["A red square."])

        assert image_of(redis_conn, turn, "photo.png") == picture
        assert turn.attachments[0].content_type == "image/png"
        assert turn.text == "what is this?\n\nAttached file app.log:\n```\nERROR boom\n```"

        # Only an image: the contract's text.
        only = [slack_file(bot, "red.png", picture)]  # no mimetype: judged by name, then bytes
        await bot.send_event(event_body(mention("", ts="4.2", files=only)))
        job_id, turn = await worker.take()
        worker.answer(job_id, "ok")
        assert turn.text == IMAGE_ONLY_TEXT
        assert image_of(redis_conn, turn, "red.png") == picture

    run_slack(settings, redis_url, scenario)


def test_slack_oversized_fake_and_missing_images_are_left_out_and_said(
    settings: Settings, redis_conn: Redis, redis_url: str, tmp_path: Path
) -> None:
    worker = FakeWorker(redis_conn)
    big = png(64)

    async def scenario(bot: BotUnderTest) -> None:
        gone = {"name": "gone.png", "size": 70, "mimetype": "image/png"}
        gone["url_private_download"] = f"{bot.fake.url}/files/gone.png"  # 404
        files = [
            slack_file(bot, "big.png", big, "image/png"),
            slack_file(bot, "fake.png", b"not a picture at all", "image/png"),
            gone,
        ]
        await bot.send_event(event_body(mention("look", ts="6.1", files=files)))
        job_id, turn = await worker.take()
        size = f"{len(big) / 1000:.0f} kB"
        hint = (
            f":bulb: _I left out big.png: {size} is over the 1 kB image limit; "
            f"fake.png: {UNSUPPORTED}; gone.png: it could not be downloaded._"
        )
        await bot.fake.wait_for(lambda: hint in texts_in(bot, "6.1"))
        worker.answer(job_id, "Nothing to see.")
        await bot.fake.wait_for(lambda: "Nothing to see." in texts_in(bot, "6.1"))

        assert f"[Attached image big.png: not included, {size} is over" in turn.text
        assert f"[Attached image fake.png: not included, {UNSUPPORTED}]" in turn.text
        assert "[Attached image gone.png: not included, it could not be downloaded]" in turn.text
        assert not any(a.image_id for a in turn.attachments)
        assert "big.png" not in bot.fake.downloads  # too big by its declared size
        assert "fake.png" in bot.fake.downloads
        # The bot token never reaches the user.
        assert not any("xoxb-" in t for t in texts_in(bot, "6.1"))

    run_slack(settings, redis_url, scenario, watcher_for(tmp_path, SMALL_IMAGES))


def release(conn: Redis, job_id: str) -> None:
    """Let the conversation's next turn run, as a real worker does when a job ends."""
    job = Job.fetch(job_id, connection=conn)
    if job.rate_limit_key:
        RateLimitRegistry.from_job(job).release_and_enqueue(job.id)


def test_slack_file_share_in_a_thread_follow_up(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)
    picture = png()

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(mention("hi", ts="5.1")))
        job_id, _ = await worker.take()
        worker.answer(job_id, "Hello.")
        release(redis_conn, job_id)
        await bot.fake.wait_for(lambda: texts_in(bot, "5.1") == ["Hello."])

        files = [slack_file(bot, "chart.png", picture, "image/png")]
        follow_up = message(
            "and this one?", ts="5.2", thread_ts="5.1", subtype="file_share", files=files
        )
        await bot.send_event(event_body(follow_up))
        job_id, turn = await worker.take()
        worker.answer(job_id, "A chart.")
        release(redis_conn, job_id)
        assert (turn.thread, turn.text) == ("5.1", "and this one?")
        assert image_of(redis_conn, turn, "chart.png") == picture

        # Only a picture, no words, in the thread.
        second = png(16)
        files = [slack_file(bot, "chart2.png", second, "image/png")]
        only = message("", ts="5.3", thread_ts="5.1", subtype="file_share", files=files)
        await bot.send_event(event_body(only))
        job_id, turn = await worker.take()
        worker.answer(job_id, "Another.")
        assert turn.text == IMAGE_ONLY_TEXT
        assert image_of(redis_conn, turn, "chart2.png") == second

    run_slack(settings, redis_url, scenario)
