"""Shared threads on the platforms: rebuilt history keeps who said what, the asker is named
on the turn, and answers never ping anyone (Discord allowed_mentions, Slack escaping)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes.discord_harness import StandInWorker
from fakes.discord_harness import running_bot as discord_bot
from fakes.discord_server import BOT_ID, FakeDiscord, user_payload
from fakes.slack_api import BOT_ID as SLACK_BOT_ID
from fakes.slack_api import BOT_USER_ID
from fakes.slack_harness import FakeWorker, event_body, message
from fakes.slack_harness import running_bot as slack_bot
from redis import Redis

from bots.discord.settings import DiscordSettings
from bots.slack.mrkdwn import defang, to_mrkdwn
from bots.slack.surface import ASK_EVENT
from shared.contract import Author
from shared.settings import Settings
from worker.prompt import build_prompt

pytestmark = pytest.mark.timeout(30)

CHANNEL = 800_000_000_000_000_010
PRIYA = user_payload(700_000_000_000_000_011, "Priya")
SAM = user_payload(700_000_000_000_000_012, "Sam")
LEE = user_payload(700_000_000_000_000_013, "Lee")
PINGS = "Ask <@123> or @everyone; <@&456> and @here too."


def discord_config() -> DiscordSettings:
    return DiscordSettings(edit_interval=0.1, _env_file=None)  # type: ignore[call-arg]


def test_a_three_person_discord_thread_reaches_the_model_with_each_speaker(
    settings: Settings, redis_conn: Redis, smol: Any
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with discord_bot(settings, discord_config()) as (fake, _bot):
            thread_id = await fake.open_thread(CHANNEL, owner_id=int(PRIYA["id"]))
            for who, text in ((PRIYA, "how do I rotate logs?"), (SAM, "and on macOS?")):
                said = await fake.user_says(thread_id, text, author=who)
                await fake.wait_for(lambda said=said: int(said["id"]) in fake.handled)
            await fake.user_says(thread_id, f"<@{BOT_ID}> answer Sam's question", author=LEE)
            _job, turn = await worker.take()
            assert turn.author == Author(id=LEE["id"], name="Lee")
            # Consecutive messages of different people stay apart, each with its author.
            assert [(m.content, m.author) for m in turn.history or []] == [
                ("how do I rotate logs?", Author(id=PRIYA["id"], name="Priya")),
                ("and on macOS?", Author(id=SAM["id"], name="Sam")),
            ]
            shown = smol.decode(
                build_prompt(smol, [*(turn.history or []), _newest(turn)]).input_ids
            )
            for who in (PRIYA, SAM, LEE):
                assert f"From {who['username']} (id {who['id']}):" in shown

    asyncio.run(scenario())


def _newest(turn: Any) -> Any:
    from shared.contract import Message

    return Message(role="user", content=turn.text, author=turn.author)


def _sent_bodies(fake: FakeDiscord) -> list[dict[str, Any]]:
    """Every message body the bot sent or edited: REST, interaction replies, follow-ups."""
    bodies = [
        c.body
        for c in fake.calls
        if isinstance(c.body, dict)
        and c.method in ("POST", "PATCH")
        and ("content" in c.body or "data" in c.body)
        and "/threads" not in c.path
    ]
    return [b.get("data", b) if "type" in b and "data" in b else b for b in bodies]


def test_every_discord_send_path_pings_no_one(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with discord_bot(settings, discord_config()) as (fake, _bot):
            # A mention (thread + placeholder + edits + a follow-up message)...
            await fake.user_says(CHANNEL, f"<@{BOT_ID}> who should I ask? @everyone")
            job_id, turn = await worker.take()
            worker.answer(job_id, PINGS + "\n\n" + "long " * 500)
            thread_id = int(turn.thread)
            await fake.wait_for(lambda: len(fake.bot_messages(thread_id)) >= 2)
            # ... and /ask (the interaction's own reply echoes the question).
            await fake.interact(CHANNEL, "ask", {"question": "ping <@123> @here"})
            job_id, _turn = await worker.take()
            worker.answer(job_id, PINGS)
            await fake.wait_for(
                lambda: any(PINGS in m["content"] for m in fake.bot_messages(int(_turn.thread)))
            )
            # ... and a context-menu answer in a DM the bot is not in (the reply's own edit).
            target = fake.dm_message(fake.new_id(), "who do I ask? @everyone", LEE)
            payload = await fake.use_message_command_in_dm("Ask corral", target)
            job_id, _turn = await worker.take()
            worker.answer(job_id, PINGS)
            await fake.wait_for(
                lambda: fake.originals.get(payload["token"], {}).get("content") == PINGS
            )
            bodies = _sent_bodies(fake)
            assert len(bodies) >= 6
            assert any(PINGS == b.get("content") for b in bodies)
            for body in bodies:
                mentions = body.get("allowed_mentions") or {}
                assert mentions.get("parse") == [], body  # no @everyone, roles or users
                assert not (mentions.get("users") or mentions.get("roles")), body
                assert not mentions.get("replied_user"), body

    asyncio.run(scenario())


def test_a_rebuilt_slack_thread_keeps_its_authors_with_their_names(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)
    root = "1700000000.000100"

    async def scenario() -> None:
        async with slack_bot(settings, redis_url) as bot:
            bot.fake.users.update(
                {"U1": {"display_name": "Priya"}, "U3": {"display_name": "", "real_name": "Lee Wu"}}
            )
            echo = {"question": "rotate logs?"}
            bot.fake.replies[("C1", root)] = [
                {
                    "ts": root,
                    "user": BOT_USER_ID,
                    "bot_id": SLACK_BOT_ID,
                    "text": "<@U1> asked: rotate logs?",
                    "metadata": {"event_type": ASK_EVENT, "event_payload": echo},
                },
                {"ts": "1700000000.000150", "user": BOT_USER_ID, "text": "Use logrotate."},
                {"ts": "1700000000.000160", "user": "U2", "text": "and macOS?",
                 "user_profile": {"display_name": "Sam"}},
                {"ts": "1700000000.000170", "user": "U1", "text": "thanks"},
                {"ts": "1700000000.000200", "user": "U3", "text": "what did Sam ask?"},
            ]  # fmt: skip
            asked = message("what did Sam ask?", thread_ts=root, parent_user_id=BOT_USER_ID)
            asked["user"] = "U3"
            await bot.send_event(event_body(asked))
            job_id, turn = await worker.take()
            assert turn.author == Author(id="U3", name="Lee Wu")  # users.info
            assert [(m.role, m.content, m.author) for m in turn.history or []] == [
                ("user", "rotate logs?", Author(id="U1", name="Priya")),  # the /ask echo
                ("assistant", "Use logrotate.", None),
                ("user", "and macOS?", Author(id="U2", name="Sam")),  # its own profile
                ("user", "thanks", Author(id="U1", name="Priya")),
            ]
            worker.answer(job_id, PINGS + " <!channel> <!here|here> [x](@U1)")
            text = await bot.fake.wait_for(
                lambda: (
                    "".join(m.text for m in bot.fake.bot_messages("C1", root)).count("here")
                    and "".join(m.text for m in bot.fake.bot_messages("C1", root))
                )
            )
            assert "<@" not in text and "<!" not in text

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "answer",
    ["<@U123> hi", "<!channel>", "<!here>", "<!everyone>", "<!subteam^S1>", "[x](@U1)",
     "[y](!here)", "`<@U1>`", "```\n<!channel>\n```", "**<@U1>**"],
)  # fmt: skip
def test_slack_answers_never_carry_mention_syntax(answer: str) -> None:
    shown = to_mrkdwn(answer)
    assert "<@" not in shown and "<!" not in shown
    inert = defang(answer + " @here @channel @everyone")
    assert "<@" not in inert and "<!" not in inert
    assert not any(f"@{word}" in inert for word in ("here", "channel", "everyone"))
