"""Team controls in the real Slack app (Bolt over signed HTTP, fake Web API, real Redis/RQ):
permissions with user groups, `/ask model|system|settings|usage`, quotas, the
trimmed-history notice and shared text files."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.slack_harness import BotUnderTest, FakeWorker, event_body, mention, running_bot
from redis import Redis
from rq import Queue

from bots.slack.settings import SlackSettings
from shared.contract import Usage
from shared.settings import Settings
from shared.team_config import ConfigWatcher

pytestmark = pytest.mark.timeout(40)

CONFIG = """
models:
  default: small
  available: [{name: small}, {name: big}]
permissions:
  admins: [UADMIN]
  allow:
    users: [U1]
    roles: [SGOOD]
  block:
    users: [UBAD]
"""


def run_bot(
    settings: Settings,
    redis_url: str,
    watcher: ConfigWatcher | None,
    scenario: Callable[[BotUnderTest], Awaitable[None]],
) -> None:
    async def main() -> None:
        slack = SlackSettings(update_interval=0.1, _env_file=None)  # type: ignore[call-arg]
        async with running_bot(settings, redis_url, slack, watcher) as bot:
            await asyncio.wait_for(scenario(bot), 20)

    asyncio.run(main())


def watcher_for(tmp_path: Path, text: str = CONFIG) -> ConfigWatcher:
    path = tmp_path / "corral.yaml"
    path.write_text(text)
    return ConfigWatcher(path, interval=0.05)


def said(bot: BotUnderTest) -> list[str]:
    return [str(r.get("text", "")) for r in bot.fake.responses]


def ephemerals(bot: BotUnderTest) -> list[dict[str, Any]]:
    return [c.args for c in bot.fake.calls_to("chat.postEphemeral")]


async def settled(bot: BotUnderTest) -> None:
    await asyncio.sleep(0.3)  # lazy listeners run after the ack; give a refused one time to act


def test_permissions_with_user_groups(
    settings: Settings, redis_conn: Redis, redis_url: str, tmp_path: Path
) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario(bot: BotUnderTest) -> None:
        bot.fake.usergroups["SGOOD"] = ["U2"]
        # Blocked user: one ephemeral notice to them, nothing queued.
        await bot.send_event(event_body(mention("hi", user="UBAD", ts="1.1")))
        await bot.fake.wait_for(lambda: ephemerals(bot))
        [notice] = ephemerals(bot)
        assert notice["user"] == "UBAD" and "not allowed" in notice["text"]
        # Not on the allow-list and in no allowed group.
        await bot.send_event(event_body(mention("hi", user="U3", ts="1.2")))
        await bot.fake.wait_for(lambda: len(ephemerals(bot)) == 2)
        await bot.send_command("a question", user_id="U3")
        await bot.fake.wait_for(lambda: any("not allowed" in t for t in said(bot)))
        await bot.send_command("settings", user_id="UBAD")
        await bot.fake.wait_for(lambda: sum("not allowed" in t for t in said(bot)) == 2)
        await settled(bot)
        assert worker.queued() == 0
        assert not bot.fake.calls_to("chat.postMessage")
        # Allowed through the user group SGOOD.
        await bot.send_event(event_body(mention("via group", user="U2", ts="1.3")))
        job_id, turn = await worker.take()
        assert (turn.user, turn.text) == ("U2", "via group")
        worker.answer(job_id, "ok")
        # Admin-only controls are refused for others.
        await bot.send_command("model big", user_id="U1")
        await bot.send_command("system Be rude.", user_id="U1")
        await bot.fake.wait_for(lambda: sum("Only corral admins" in t for t in said(bot)) == 2)
        await bot.send_event(event_body(mention("next", user="U1", ts="1.4")))
        job_id, turn = await worker.take()
        assert turn.model is None and turn.system_prompt is None
        worker.answer(job_id, "ok")

    run_bot(settings, redis_url, watcher_for(tmp_path), scenario)


def test_model_and_system_from_chat_survive_a_restart(
    settings: Settings, redis_conn: Redis, redis_url: str, tmp_path: Path
) -> None:
    big = FakeWorker(redis_conn, "corral-test:big")
    watcher = watcher_for(tmp_path)

    async def change(bot: BotUnderTest) -> None:
        await bot.send_command("model big", user_id="UADMIN")
        await bot.fake.wait_for(lambda: any("now uses `big`" in t for t in said(bot)))
        await bot.send_command("system Answer in haiku.", user_id="UADMIN")
        await bot.fake.wait_for(lambda: any("prompt is updated" in t for t in said(bot)))
        await bot.send_command("settings", user_id="U1")
        await bot.fake.wait_for(lambda: any("Model: `big` (set in chat)" in t for t in said(bot)))
        assert any("Answer in haiku." in t for t in said(bot))

    async def use(bot: BotUnderTest) -> None:
        await bot.send_event(event_body(mention("a question", ts="2.1")))
        job_id, turn = await big.take()
        assert (turn.model, turn.system_prompt) == ("big", "Answer in haiku.")
        big.answer(job_id, "Five seven five.")

    run_bot(settings, redis_url, watcher, change)
    run_bot(settings, redis_url, watcher, use)  # a new app: settings came from Redis
    assert Queue("corral-test", connection=redis_conn).count == 0


def test_trimmed_notice_attachments_quota_and_usage(
    settings: Settings, redis_conn: Redis, redis_url: str, tmp_path: Path
) -> None:
    worker = FakeWorker(redis_conn)
    config = "limits:\n  daily_tokens_per_user: 50\npermissions:\n  admins: [UADMIN]\n"

    def done(job_id: str, text: str, **usage: Any) -> None:
        worker.emit(job_id, "started")
        worker.emit(job_id, "done", text, finish_reason="stop", usage=Usage(**usage))

    async def scenario(bot: BotUnderTest) -> None:
        log, gif = b"ERROR boom\n", b"GIF\x00\x01\x02"
        files = [
            {"name": "app.log", "size": 11, "url_private_download": bot.fake.file_url("a", log)},
            {"name": "pic.gif", "size": 6, "url_private_download": bot.fake.file_url("b", gif)},
        ]
        await bot.send_event(event_body(mention("why?", ts="3.1", files=files)))
        job_id, turn = await worker.take()
        assert "why?\n\nAttached file app.log:\n```\nERROR boom\n```" in turn.text
        # pic.gif is an image by its name, but its bytes are no GIF: left out, and said so.
        unsupported = "pic.gif: only PNG, JPEG, GIF and WebP images are supported"
        assert f"[Attached image {unsupported.replace(': ', ': not included, ', 1)}]" in turn.text
        done(job_id, "Because.", prompt_tokens=20, completion_tokens=10)
        await bot.fake.wait_for(
            lambda: (
                [m.text for m in bot.fake.bot_messages("C1", "3.1")]
                == ["Because.", f":bulb: _I left out {unsupported}._"]
            )
        )

        # History was cut: a short notice follows the answer; not when it was not.
        await bot.send_event(event_body(mention("more", ts="3.2")))
        job_id, _ = await worker.take()
        done(job_id, "More.", prompt_tokens=15, completion_tokens=5, history_dropped=2)
        notice = ":bulb: _This conversation outgrew my context: I left out the 2 oldest messages."
        await bot.fake.wait_for(
            lambda: any(m.text.startswith(notice) for m in bot.fake.bot_messages("C1", "3.2"))
        )
        assert not any("context" in m.text for m in bot.fake.bot_messages("C1", "3.1"))
        texts = [m.text for m in bot.fake.bot_messages("C1", "3.2")]
        assert texts == ["More.", texts[-1]] and "reset" in texts[-1]

        # 50 tokens used: the next question is refused and nothing is enqueued.
        await bot.send_event(event_body(mention("again", ts="3.3")))
        await bot.fake.wait_for(lambda: ephemerals(bot))
        assert "daily allowance of 50 tokens" in ephemerals(bot)[0]["text"]
        await settled(bot)
        assert worker.queued() == 0

        await bot.send_command("usage")
        want = "Your usage today: 50 tokens (35 prompt + 15 answer) of 50 allowed"
        await bot.fake.wait_for(lambda: want in said(bot))
        await bot.send_command("usage", user_id="UADMIN")
        await bot.fake.wait_for(lambda: any("Team today by user: U1: 50" in t for t in said(bot)))
        assert any("by channel: C1: 50" in t and "by model: default: 50" in t for t in said(bot))

    run_bot(settings, redis_url, watcher_for(tmp_path, config), scenario)


def test_live_reload_in_the_slack_app(
    settings: Settings, redis_conn: Redis, redis_url: str, tmp_path: Path
) -> None:
    worker = FakeWorker(redis_conn)
    watcher = watcher_for(tmp_path, "permissions: {}\n")

    async def scenario(bot: BotUnderTest) -> None:
        (tmp_path / "corral.yaml").write_text("permissions:\n  block:\n    users: [U1]\n")
        await bot.fake.wait_for(lambda: "U1" in watcher.config.permissions.block.users, poll=0.02)
        await bot.send_event(event_body(mention("hi", ts="4.1")))
        await bot.fake.wait_for(lambda: ephemerals(bot))
        (tmp_path / "corral.yaml").write_text("permissions: [not, a, mapping\n")
        await bot.fake.wait_for(lambda: watcher.last_error, poll=0.02)
        assert "U1" in watcher.config.permissions.block.users
        await settled(bot)
        assert worker.queued() == 0

    run_bot(settings, redis_url, watcher, scenario)
