"""Discord context-menu commands, user installs and feedback reactions, with the real
discord.py client against the fake Discord and real Redis/RQ."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fakes.discord_harness import StandInWorker, running_bot
from fakes.discord_server import ALICE_ID, BOT_ID, FakeDiscord, user_payload
from redis import Redis

from bots.discord.context_menus import ASK, SUMMARIZE, SUMMARY_REQUEST
from bots.discord.settings import DiscordSettings
from shared import feedback
from shared.contract import Author
from shared.settings import Settings
from shared.team_config import ConfigWatcher, parse_config

pytestmark = pytest.mark.timeout(30)

CHANNEL = 800_000_000_000_000_010
SAM = user_payload(700_000_000_000_000_012, "Sam")
LEE = user_payload(700_000_000_000_000_013, "Lee")


def config() -> DiscordSettings:
    return DiscordSettings(edit_interval=0.1, _env_file=None)  # type: ignore[call-arg]


def run(
    settings: Settings, scenario: Callable[[FakeDiscord, Any], Awaitable[None]], yaml: str = ""
) -> None:
    watcher = ConfigWatcher(None, initial=parse_config(yaml))

    async def main() -> None:
        async with running_bot(settings, config(), watcher=watcher) as (fake, bot):
            await scenario(fake, bot)

    asyncio.run(main())


def contents(fake: FakeDiscord, channel_id: int) -> list[str]:
    return [m["content"] for m in fake.bot_messages(channel_id)]


def acked_in(fake: FakeDiscord, payload: dict[str, Any]) -> float:
    interaction = int(payload["id"])
    return fake.interaction_acked[interaction] - fake.interaction_sent[interaction]


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """Poll state outside the fake (Redis) until ``check()`` is truthy."""
    async with asyncio.timeout(timeout):
        while not (found := await check()):
            await asyncio.sleep(0.02)
        return found


def test_the_menus_are_registered_for_user_installs_and_every_context(
    settings: Settings,
) -> None:
    async def scenario(fake: FakeDiscord, _bot: Any) -> None:
        menus = {c["name"]: c for c in fake.commands if c.get("type") == 3}
        assert set(menus) == {ASK, SUMMARIZE}
        for menu in menus.values():
            assert sorted(menu["integration_types"]) == [0, 1]  # guild and user installs
            assert sorted(menu["contexts"]) == [0, 1, 2]  # guilds, bot DMs, private channels
        [summary] = [c for c in fake.commands if c["name"] == "feedback"]
        assert summary["integration_types"] == [0]

    run(settings, scenario)


def test_ask_corral_is_acknowledged_at_once_and_answered_in_a_thread(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario(fake: FakeDiscord, bot: Any) -> None:
        target = await fake.user_says(CHANNEL, "why does the cron job run twice?", author=SAM)
        await fake.wait_for(lambda: int(target["id"]) in fake.handled)
        assert worker.queue.count == 0  # no mention: not a question by itself
        payload = await fake.use_message_command(CHANNEL, ASK, target)
        job_id, turn = await worker.take()
        assert acked_in(fake, payload) < 3.0
        [ack] = fake.interaction_callbacks
        assert ack["type"] == 4 and ack["data"]["flags"] & 64  # a private "asking…" line
        assert turn.text == "why does the cron job run twice?"
        assert turn.user == str(ALICE_ID)  # the asker's quota and usage
        assert turn.author == Author(id=SAM["id"], name="Sam")  # the words are Sam's
        [thread] = fake.threads()
        assert thread["id"] == target["id"] and turn.thread == thread["id"]
        worker.answer(job_id, "Two crontab entries.")
        await fake.wait_for(lambda: contents(fake, int(thread["id"])) == ["Two crontab entries."])

    run(settings, scenario)


def test_ask_corral_in_a_dm_through_a_user_install_answers_in_the_reply(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario(fake: FakeDiscord, bot: Any) -> None:
        dm = fake.new_id()
        target = fake.dm_message(dm, "what's a good name for a queue library?", LEE)
        payload = await fake.use_message_command_in_dm(ASK, target)
        job_id, turn = await worker.take()
        assert acked_in(fake, payload) < 3.0
        [ack] = fake.interaction_callbacks
        assert ack["type"] == 5  # "corral is thinking…", in the reply itself
        assert turn.channel == str(dm) and turn.text.startswith("what's a good name")
        worker.answer(job_id, "Try *corral*.")
        await fake.wait_for(
            lambda: fake.originals.get(payload["token"], {}).get("content") == "Try *corral*."
        )
        assert not fake.messages.get(dm, [])[1:]  # the bot posted nothing in the DM itself

    run(settings, scenario)


def test_summarize_thread_reads_the_thread_and_answers_there(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario(fake: FakeDiscord, bot: Any) -> None:
        thread_id = await fake.open_thread(CHANNEL, owner_id=int(SAM["id"]))
        for who, text in ((SAM, "the deploy failed"), (LEE, "I rolled it back")):
            said = await fake.user_says(thread_id, text, author=who)
            await fake.wait_for(lambda said=said: int(said["id"]) in fake.handled)
        payload = await fake.use_message_command(thread_id, SUMMARIZE, said)
        job_id, turn = await worker.take()
        assert acked_in(fake, payload) < 3.0
        assert turn.text == SUMMARY_REQUEST and turn.thread == str(thread_id)
        assert [(m.content, m.author.name if m.author else "") for m in turn.history or []] == [
            ("the deploy failed", "Sam"),
            ("I rolled it back", "Lee"),
        ]
        worker.answer(job_id, "Sam's deploy failed; Lee rolled it back.")
        await fake.wait_for(lambda: contents(fake, thread_id)[-1:] == [
            "Sam's deploy failed; Lee rolled it back."
        ])  # fmt: skip

    run(settings, scenario)


def test_summarize_outside_a_thread_and_refused_users_get_one_private_line(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    blocked = "permissions:\n  block:\n    users: ['700000000000000013']\n"

    async def scenario(fake: FakeDiscord, bot: Any) -> None:
        target = await fake.user_says(CHANNEL, "no thread here", author=SAM)
        await fake.use_message_command(CHANNEL, SUMMARIZE, target)
        await fake.use_message_command(CHANNEL, ASK, target, user=LEE)
        await fake.wait_for(lambda: len(fake.interaction_callbacks) == 2)
        texts = [c["data"]["content"] for c in fake.interaction_callbacks]
        assert "not in a thread" in texts[0] and "not allowed" in texts[1]
        assert all(c["data"]["flags"] & 64 for c in fake.interaction_callbacks)
        await asyncio.sleep(0.2)
        assert worker.queue.count == 0

    run(settings, scenario, blocked)


def test_reactions_on_an_answer_are_recorded_and_summed_for_admins(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)
    admins = f"permissions:\n  admins: ['{ALICE_ID}']\n"

    async def scenario(fake: FakeDiscord, bot: Any) -> None:
        await fake.user_says(CHANNEL, f"<@{BOT_ID}> how do I rotate logs?")
        job_id, turn = await worker.take()
        thread_id = int(turn.thread)
        worker.answer(job_id, "Use logrotate.")
        answer = await fake.wait_for(
            lambda: (
                next((m for m in fake.bot_messages(thread_id) if m.get("reactions")), None)
                and len(fake.bot_messages(thread_id)[-1].get("reactions", [])) == 2
                and fake.bot_messages(thread_id)[-1]
            )
        )
        assert [(r["emoji"]["name"], r["me"]) for r in answer["reactions"]] == [
            ("👍", True),
            ("👎", True),
        ]
        redis = bot.turns.aredis
        await fake.user_reacts(thread_id, int(answer["id"]), "👍", user_id=int(SAM["id"]))
        await fake.user_reacts(thread_id, int(answer["id"]), "👎", user_id=int(LEE["id"]))
        await fake.user_reacts(thread_id, int(answer["id"]), "🎉", user_id=int(LEE["id"]))
        await fake.user_reacts(thread_id, int(answer["id"]), "👍", user_id=BOT_ID)  # ours
        votes = await until(
            lambda: _votes_when(redis, job_id, 2)  # type: ignore[arg-type]
        )
        assert votes == {f"discord:{SAM['id']}": "up", f"discord:{LEE['id']}": "down"}
        found = await feedback.summary(redis, "discord")
        assert (found.up, found.down, found.channels) == (1, 1, {str(CHANNEL): (1, 1)})
        await fake.interact(CHANNEL, "feedback")
        await fake.wait_for(lambda: fake.interaction_callbacks)
        assert "👍 1 · 👎 1 (50% helpful)" in fake.interaction_callbacks[-1]["data"]["content"]
        await fake.interact(CHANNEL, "feedback", user=SAM)
        await fake.wait_for(lambda: len(fake.interaction_callbacks) == 2)
        assert "Only corral admins" in fake.interaction_callbacks[-1]["data"]["content"]

    run(settings, scenario, admins)


async def _votes_when(redis: Any, job_id: str, count: int) -> dict[str, str] | None:
    votes = await feedback.votes_on(redis, job_id)
    return votes if len(votes) >= count else None
