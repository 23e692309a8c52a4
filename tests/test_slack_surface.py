"""Feedback buttons, the App Home tab and the "Summarize thread" shortcut, through Bolt's
own dispatch with the fake Slack; and the manifest declaring what the code uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fakes.slack_harness import (
    BotUnderTest,
    FakeWorker,
    app_home_opened,
    assistant_thread_started,
    button_click,
    event_body,
    mention,
    message,
    message_shortcut,
    run_scenario,
)
from redis import Redis

from bots.slack.feedback import THANKS
from bots.slack.shortcut import CALLBACK_ID, CANNOT_READ, SUMMARY_REQUEST
from shared import feedback
from shared.settings import Settings

pytestmark = pytest.mark.timeout(40)

ADMIN_CONFIG = "permissions:\n  admins: [U1]\n"
ROOT = "1700000000.000100"


def buttons_of(blocks: list[dict[str, object]]) -> list[tuple[str, str]]:
    return [
        (str(e["action_id"]), str(e["value"]))
        for b in blocks
        if b.get("type") == "actions"
        for e in b["elements"]  # type: ignore[attr-defined]
    ]


def test_a_finished_answer_gets_buttons_and_a_click_is_recorded(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(mention("how do I rotate logs?", ts=ROOT)))
        job_id, _turn = await worker.take()
        worker.answer(job_id, "Use **logrotate**.")
        answer = await bot.fake.wait_for(
            lambda: next(
                (m for m in bot.fake.bot_messages("C1", ROOT) if buttons_of(m.blocks)), None
            )
        )
        assert buttons_of(answer.blocks) == [
            ("corral_feedback_up", job_id),
            ("corral_feedback_down", job_id),
        ]
        assert answer.blocks[0]["text"]["text"] == "Use *logrotate*."  # the answer, as mrkdwn

        click = button_click("corral_feedback_up", job_id, message_ts=answer.ts)
        reply = await bot.send_interaction(click)
        assert reply.status == 200 and reply.seconds < 3
        await bot.fake.wait_for(lambda: bot.fake.calls_to("chat.postEphemeral"))
        [thanks] = bot.fake.calls_to("chat.postEphemeral")
        assert thanks.args["text"] == THANKS and thanks.args["user"] == "U1"
        assert await feedback.votes_on(bot.turns.aredis, job_id) == {"slack:U1": "up"}
        # The same click again counts once; changing one's mind moves the vote.
        await bot.send_interaction(click)
        await bot.fake.wait_for(lambda: len(bot.fake.calls_to("chat.postEphemeral")) == 2)
        await bot.send_interaction(button_click("corral_feedback_down", job_id, user="U1"))
        await bot.send_interaction(button_click("corral_feedback_up", job_id, user="U2"))
        await bot.fake.wait_for(lambda: len(bot.fake.calls_to("chat.postEphemeral")) == 4)
        found = await feedback.summary(bot.turns.aredis, "slack")
        assert (found.up, found.down, found.channels) == (1, 1, {"C1": (1, 1)})
        # Admins see it with their usage.
        await bot.send_command("usage")
        usage = await bot.fake.wait_for(lambda: bot.fake.responses)
        assert "Feedback, last 7 days: 👍 1 · 👎 1 (50% helpful)" in usage[-1]["text"]

    run_scenario(settings, redis_url, scenario, ADMIN_CONFIG)


def test_a_native_pane_answer_carries_the_buttons_from_stop_stream(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)
    thread = "1700000100.000100"

    async def scenario(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(assistant_thread_started("D1", thread)))
        await bot.fake.wait_for(lambda: bot.fake.suggested.get(("D1", thread)))
        question = message("hi", channel="D1", ts="1700000100.000200", thread_ts=thread)
        question["channel_type"] = "im"
        await bot.send_event(event_body(question))
        job_id, _turn = await worker.take()
        worker.answer(job_id, "Hello!")
        [reply] = await bot.fake.wait_for(
            lambda: [m for m in bot.fake.bot_messages("D1", thread) if m.blocks]
        )
        assert reply.streamed and reply.text == "Hello!"
        assert buttons_of(reply.blocks)[0] == ("corral_feedback_up", job_id)
        [stop] = bot.fake.calls_to("chat.stopStream")
        assert stop.args["blocks"]
        assert not bot.fake.calls_to("chat.update")  # no extra edit for the buttons

    run_scenario(settings, redis_url, scenario, ADMIN_CONFIG)


def test_app_home_shows_usage_and_channel_settings(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    config = ADMIN_CONFIG + "channels:\n  C7:\n    system_prompt: 'You help <ops> & SRE.'\n"

    async def scenario(bot: BotUnderTest) -> None:
        await bot.turns.aredis.hset("corral:channel:slack:C8", "model", "big")
        reply = await bot.send_event(event_body(app_home_opened("U1")))
        assert reply.status == 200
        view = await bot.fake.wait_for(lambda: bot.fake.home_views.get("U1"))
        text = "\n".join(b["text"]["text"] for b in view["blocks"] if b.get("type") == "section")
        assert "*Your usage today:*" in text
        assert "<#C7>: model" in text and "You help &lt;ops&gt; &amp; SRE." in text
        assert "<#C8>: model `big` (set in chat)" in text
        assert "Feedback, last 7 days: no votes yet." in text  # U1 is an admin
        await bot.send_event(event_body(app_home_opened("U2")))
        other = await bot.fake.wait_for(lambda: bot.fake.home_views.get("U2"))
        assert "Feedback" not in str(other)  # not for everyone

    run_scenario(settings, redis_url, scenario, config)


def test_summarize_thread_shortcut_answers_in_the_thread(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        bot.fake.replies[("C1", ROOT)] = [
            {"ts": ROOT, "user": "U1", "text": "the deploy failed", "thread_ts": ROOT},
            {"ts": "1700000000.000150", "user": "U2", "text": "rolled back", "thread_ts": ROOT},
        ]
        picked = {"ts": "1700000000.000150", "user": "U2", "text": "rolled back", "thread_ts": ROOT}
        reply = await bot.send_interaction(message_shortcut(CALLBACK_ID, picked, user="U3"))
        assert reply.status == 200 and reply.seconds < 3
        job_id, turn = await worker.take()
        assert turn.text == SUMMARY_REQUEST and turn.thread == ROOT and turn.user == "U3"
        assert [(m.content, m.author.id if m.author else None) for m in turn.history or []] == [
            ("the deploy failed", "U1"),
            ("rolled back", "U2"),
        ]
        worker.answer(job_id, "The deploy failed and was rolled back.")
        await bot.fake.wait_for(
            lambda: any("rolled back" in m.text for m in bot.fake.bot_messages("C1", ROOT))
        )

    run_scenario(settings, redis_url, scenario, ADMIN_CONFIG)


def test_summarize_thread_follows_the_permissions(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)
    config = "permissions:\n  block:\n    users: [U3]\n"

    async def scenario(bot: BotUnderTest) -> None:
        picked = {"ts": ROOT, "user": "U1", "text": "hello"}
        await bot.send_interaction(message_shortcut(CALLBACK_ID, picked, user="U3"))
        [refusal] = await bot.fake.wait_for(lambda: bot.fake.calls_to("chat.postEphemeral"))
        assert refusal.args["user"] == "U3" and "not allowed" in refusal.args["text"]
        assert worker.queued() == 0

    run_scenario(settings, redis_url, scenario, config)


def test_summarize_thread_where_the_bot_cannot_read_says_so(
    settings: Settings, redis_conn: Redis, redis_url: str
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        bot.fake.fail_next("conversations.replies", status=200, error="not_in_channel")
        picked = {"ts": ROOT, "user": "U1", "text": "hello"}
        await bot.send_interaction(message_shortcut(CALLBACK_ID, picked, user="U3"))
        [note] = await bot.fake.wait_for(lambda: bot.fake.calls_to("chat.postEphemeral"))
        assert note.args["text"] == CANNOT_READ and note.args["user"] == "U3"
        assert worker.queued() == 0

    run_scenario(settings, redis_url, scenario, ADMIN_CONFIG)


def test_the_manifest_declares_what_the_code_uses() -> None:
    manifest = yaml.safe_load(Path(__file__).parents[1].joinpath("slack/manifest.yml").read_text())
    features, settings = manifest["features"], manifest["settings"]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"assistant:write", "users:read", "channels:read", "chat:write"} <= scopes
    assert "assistant_view" in features and features["app_home"]["home_tab_enabled"]
    assert {s["callback_id"] for s in features["shortcuts"]} == {CALLBACK_ID}
    events = set(settings["event_subscriptions"]["bot_events"])
    assert {"assistant_thread_started", "assistant_thread_context_changed"} <= events
    assert {"app_home_opened", "message.im", "app_mention"} <= events
    assert settings["interactivity"]["is_enabled"]
