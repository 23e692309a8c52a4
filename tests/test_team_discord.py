"""Team controls in the real Discord bot: permissions, /model /system /settings /usage,
quotas, the trimmed-history notice and text attachments (fake Discord, real Redis/RQ)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from fakes.discord_harness import StandInWorker, running_bot
from fakes.discord_server import BOT_ID, FakeDiscord, user_payload
from redis import Redis
from rq import Queue

from bots.discord.settings import DiscordSettings
from shared.contract import Usage
from shared.images import load_image
from shared.settings import Settings
from shared.team_config import ConfigWatcher

pytestmark = pytest.mark.timeout(40)

MENTION = f"<@{BOT_ID}>"
CHANNEL = 800_000_000_000_000_010
OTHER_CHANNEL = 800_000_000_000_000_011
ALICE = user_payload(700_000_000_000_000_001, "alice")
BOB = user_payload(700_000_000_000_000_002, "bob")
ADMIN = user_payload(700_000_000_000_000_009, "admin")
ROLE_OK = 600_000_000_000_000_001
ROLE_BAD = 600_000_000_000_000_002


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def config(**values: Any) -> DiscordSettings:
    return DiscordSettings(edit_interval=0.1, _env_file=None, **values)  # type: ignore[call-arg]


def watcher_for(tmp_path: Path, text: str) -> ConfigWatcher:
    path = tmp_path / "corral.yaml"
    path.write_text(text)
    return ConfigWatcher(path, interval=0.05)


def fake() -> FakeDiscord:
    return FakeDiscord(role_ids=(ROLE_OK, ROLE_BAD))


def contents(fake: FakeDiscord, channel_id: int) -> list[str]:
    return [m["content"] for m in fake.bot_messages(channel_id)]


def ephemeral_texts(fake: FakeDiscord) -> list[str]:
    found = [c.get("data", {}).get("content", "") for c in fake.interaction_callbacks]
    return [text for text in found if text] + [f["content"] for f in fake.followups]


BASE = f"""
models:
  default: small
  available: [{{name: small}}, {{name: big, description: the large one}}]
permissions:
  admins: [{ADMIN["id"]}]
  allow:
    users: [{ALICE["id"]}]
    roles: [{ROLE_OK}]
  block:
    roles: [{ROLE_BAD}]
    channels: [{OTHER_CHANNEL}]
"""


def test_permission_matrix(settings: Settings, redis_conn: Redis, tmp_path: Path) -> None:
    worker = StandInWorker(redis_conn)
    watcher = watcher_for(tmp_path, BASE)

    async def scenario() -> None:
        async with running_bot(settings, config(), fake(), watcher) as (fake_, _bot):
            # Allowed by user id: a job is queued.
            q = await fake_.user_says(CHANNEL, f"{MENTION} hi", author=ALICE)
            job_id, turn = await worker.take()
            assert turn.user == ALICE["id"]
            worker.answer(job_id, "Hello.")
            await fake_.wait_for(lambda: contents(fake_, int(q["id"])) == ["Hello."])

            # Allowed by role.
            await fake_.user_says(CHANNEL, f"{MENTION} via role", author=BOB, roles=[ROLE_OK])
            job_id, turn = await worker.take()
            assert (turn.user, turn.text) == (BOB["id"], "via role")
            worker.answer(job_id, "ok")

            # Not on the allow-list: one quiet notice, no thread, nothing queued.
            threads = len(fake_.threads())
            msg = await fake_.user_says(CHANNEL, f"{MENTION} let me in", author=BOB)
            await fake_.wait_for(lambda: int(msg["id"]) in fake_.handled)
            [notice] = [m for m in fake_.bot_messages(CHANNEL) if "not allowed" in m["content"]]
            assert notice["content"].startswith("⚠️ ")
            assert len(fake_.threads()) == threads

            # A blocked role wins over an allowed user.
            msg = await fake_.user_says(CHANNEL, f"{MENTION} hi", author=ALICE, roles=[ROLE_BAD])
            await fake_.wait_for(lambda: int(msg["id"]) in fake_.handled)
            assert len([m for m in fake_.bot_messages(CHANNEL) if "not allowed" in m["content"]])

            # A blocked channel: silence, even for an admin.
            msg = await fake_.user_says(OTHER_CHANNEL, f"{MENTION} hi", author=ADMIN)
            await fake_.wait_for(lambda: int(msg["id"]) in fake_.handled)
            assert contents(fake_, OTHER_CHANNEL) == []

            # /ask by a refused user: an ephemeral refusal, nothing queued.
            await fake_.interact(CHANNEL, "ask", {"question": "please"}, user=BOB)
            await fake_.wait_for(lambda: any("not allowed" in t for t in ephemeral_texts(fake_)))
            assert worker.queue.count == 0
            await fake_.interact(CHANNEL, "settings", user=BOB)  # viewing follows the rules too
            await fake_.wait_for(
                lambda: sum("not allowed" in t for t in ephemeral_texts(fake_)) == 2
            )

            # Admin-only commands are refused for others and change nothing.
            await fake_.interact(CHANNEL, "model", {"name": "big"}, user=ALICE)
            await fake_.interact(CHANNEL, "system", {"text": "Be rude."}, user=ALICE)
            await fake_.wait_for(
                lambda: sum("Only corral admins" in t for t in ephemeral_texts(fake_)) == 2
            )
            await fake_.user_says(CHANNEL, f"{MENTION} and now?", author=ALICE)
            job_id, turn = await worker.take()
            assert turn.model is None and turn.system_prompt is None
            worker.answer(job_id, "same as before")
            assert worker.queue.count == 0

    run(scenario())


def test_silent_refusal(settings: Settings, redis_conn: Redis, tmp_path: Path) -> None:
    worker = StandInWorker(redis_conn)
    text = f"permissions:\n  on_refusal: silent\n  block:\n    users: [{BOB['id']}]\n"
    watcher = watcher_for(tmp_path, text)

    async def scenario() -> None:
        async with running_bot(settings, config(), fake(), watcher) as (fake_, _bot):
            msg = await fake_.user_says(CHANNEL, f"{MENTION} hi", author=BOB)
            await fake_.wait_for(lambda: int(msg["id"]) in fake_.handled)
            assert contents(fake_, CHANNEL) == [] and fake_.threads() == []
            assert worker.queue.count == 0

    run(scenario())


def test_env_allow_lists_still_apply(settings: Settings, redis_conn: Redis, tmp_path: Path) -> None:
    """CORRAL_DISCORD_ALLOWED_CHANNELS overrides the file's channel allow-list."""
    worker = StandInWorker(redis_conn)
    watcher = watcher_for(tmp_path, f"permissions:\n  allow:\n    channels: [{OTHER_CHANNEL}]\n")

    async def scenario() -> None:
        env = config(allowed_channels=str(CHANNEL), allow_dms=False)
        async with running_bot(settings, env, fake(), watcher) as (fake_, _bot):
            msg = await fake_.user_says(OTHER_CHANNEL, f"{MENTION} hi")
            await fake_.wait_for(lambda: int(msg["id"]) in fake_.handled)
            assert worker.queue.count == 0
            await fake_.user_says(CHANNEL, f"{MENTION} hi")
            job_id, _turn = await worker.take()
            worker.answer(job_id, "ok")

    run(scenario())


def test_model_and_system_change_the_next_job_and_survive_a_restart(
    settings: Settings, redis_conn: Redis, tmp_path: Path
) -> None:
    worker = StandInWorker(redis_conn)
    big = StandInWorker(redis_conn, "corral-test:big")
    watcher = watcher_for(tmp_path, BASE)

    async def scenario() -> None:
        async with running_bot(settings, config(), fake(), watcher) as (fake_, bot):
            await fake_.interact(CHANNEL, "model", {"name": "nope"}, user=ADMIN)
            await fake_.wait_for(lambda: any("Unknown model" in t for t in ephemeral_texts(fake_)))
            await fake_.interact(CHANNEL, "model", {"name": "big"}, user=ADMIN)
            await fake_.interact(CHANNEL, "system", {"text": "Answer in haiku."}, user=ADMIN)
            await fake_.wait_for(lambda: any("now uses" in t for t in ephemeral_texts(fake_)))
            await fake_.wait_for(
                lambda: any("prompt is updated" in t for t in ephemeral_texts(fake_))
            )
            # Anyone may look.
            await fake_.interact(CHANNEL, "settings", user=ALICE)
            await fake_.wait_for(lambda: any("Model: `big`" in t for t in ephemeral_texts(fake_)))
            assert any("Answer in haiku." in t for t in ephemeral_texts(fake_))
            # Autocomplete offers the configured models.
            [command] = [c for c in bot.tree.get_commands() if c.name == "model"]
            assert command.get_parameter("name").autocomplete

        # A restarted bot (new process state) keeps the channel's settings: they live in Redis.
        async with running_bot(settings, config(), fake(), watcher) as (fake_, _bot):
            await fake_.user_says(CHANNEL, f"{MENTION} a question", author=ALICE)
            job_id, turn = await big.take()  # routed to the big model's queue
            assert turn.model == "big"
            assert turn.system_prompt == "Answer in haiku."
            big.answer(job_id, "Five seven five.")
            assert worker.queue.count == 0
            # Switching back to the default model uses the plain queue again.
            await fake_.interact(CHANNEL, "model", {"name": "small"}, user=ADMIN)
            await fake_.wait_for(lambda: any("now uses" in t for t in ephemeral_texts(fake_)))
            await fake_.user_says(CHANNEL, f"{MENTION} again", author=ALICE)
            job_id, turn = await worker.take()
            assert turn.model is None and turn.system_prompt == "Answer in haiku."
            worker.answer(job_id, "ok")

    run(scenario())
    assert Queue("corral-test:big", connection=redis_conn).count == 0


def test_live_reload_applies_an_edit_and_rejects_a_broken_one(
    settings: Settings, redis_conn: Redis, tmp_path: Path
) -> None:
    worker = StandInWorker(redis_conn)
    watcher = watcher_for(tmp_path, "permissions:\n  allow_dms: true\n")
    path = tmp_path / "corral.yaml"

    async def reloaded(fake_: FakeDiscord, write: str, expect_error: bool) -> None:
        before = watcher.config
        path.write_text(write)
        await fake_.wait_for(lambda: True)
        for _ in range(200):
            await asyncio.sleep(0.02)
            if watcher.last_error if expect_error else watcher.config is not before:
                return
        raise AssertionError("the watcher did not pick up the edit")

    async def scenario() -> None:
        async with running_bot(settings, config(), fake(), watcher) as (fake_, _bot):
            await reloaded(fake_, f"permissions:\n  block:\n    users: [{ALICE['id']}]\n", False)
            msg = await fake_.user_says(CHANNEL, f"{MENTION} hi", author=ALICE)
            await fake_.wait_for(lambda: int(msg["id"]) in fake_.handled)
            assert worker.queue.count == 0 and fake_.threads() == []

            # A broken edit is rejected with a reason; the last good config stays.
            await reloaded(fake_, "permissions:\n  admins: [1, 2, [3]]\n", True)
            assert "permissions.admins[2]" in watcher.last_error
            assert ALICE["id"] in watcher.config.permissions.block.users
            msg = await fake_.user_says(CHANNEL, f"{MENTION} hi", author=ALICE)
            await fake_.wait_for(lambda: int(msg["id"]) in fake_.handled)
            assert worker.queue.count == 0

            await reloaded(fake_, "permissions: {}\n", False)
            await fake_.user_says(CHANNEL, f"{MENTION} hi", author=ALICE)
            job_id, _turn = await worker.take()
            worker.answer(job_id, "welcome back")

    run(scenario())


def _done(worker: StandInWorker, job_id: str, text: str, **usage: Any) -> None:
    worker.emit(job_id, "started")
    worker.emit(job_id, "done", text, finish_reason="stop", usage=Usage(**usage))
    worker.release(job_id)


def test_trimmed_history_notice_only_when_history_was_cut(
    settings: Settings, redis_conn: Redis
) -> None:
    worker = StandInWorker(redis_conn)

    async def scenario() -> None:
        async with running_bot(settings, config(), fake()) as (fake_, _bot):
            q = await fake_.user_says(CHANNEL, f"{MENTION} first")
            thread = int(q["id"])
            job_id, _ = await worker.take()
            _done(worker, job_id, "One.", prompt_tokens=5, completion_tokens=2)
            await fake_.wait_for(lambda: contents(fake_, thread) == ["One."])

            await fake_.user_says(thread, "second")
            job_id, _ = await worker.take()
            _done(worker, job_id, "Two.", history_dropped=4)
            notice = "💡 This conversation outgrew my context: I left out the 4 oldest messages."
            await fake_.wait_for(lambda: len(contents(fake_, thread)) == 3)
            assert contents(fake_, thread)[1] == "Two."
            assert contents(fake_, thread)[2].startswith(notice)
            assert "/reset" in contents(fake_, thread)[2]

    run(scenario())


def test_text_attachments_reach_the_job(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)
    code = "def add(a, b):\n    return a + b\n"

    async def scenario() -> None:
        async with running_bot(settings, config(), fake()) as (fake_, _bot):
            files = {
                "add.py": code.encode(),
                "notes.md": "caf\xe9 ```x```".encode("latin-1"),  # not utf-8: replaced
                "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00",
                "big.txt": b"x" * 200_001,
            }
            await fake_.user_says(CHANNEL, f"{MENTION} review this", files=files)
            job_id, turn = await worker.take()
            worker.answer(job_id, "Looks fine.")

        assert turn.text.startswith("review this\n\nAttached file add.py:\n```\n")
        assert code.rstrip() in turn.text
        assert "caf\ufffd" in turn.text and "````" in turn.text  # fence outgrows the content's
        # logo.png is an image now (by its name, then its PNG signature): stored for the
        # worker, not a prompt block.
        assert "logo.png" not in turn.text
        logo = turn.attachments[2]
        assert (logo.content_type, logo.size) == ("image/png", len(files["logo.png"]))
        assert load_image(redis_conn, logo.image_id) == files["logo.png"]
        assert [a.image_id for a in turn.attachments if a is not logo] == ["", "", ""]
        assert "[Attached file big.txt: not included, 200,001 bytes is over" in turn.text
        assert [a.name for a in turn.attachments] == list(files)

    run(scenario())


def test_quota_and_usage(settings: Settings, redis_conn: Redis, tmp_path: Path) -> None:
    worker = StandInWorker(redis_conn)
    text = f"limits:\n  daily_tokens_per_user: 100\npermissions:\n  admins: [{ADMIN['id']}]\n"
    watcher = watcher_for(tmp_path, text)

    async def scenario() -> None:
        async with running_bot(settings, config(), fake(), watcher) as (fake_, _bot):
            q = await fake_.user_says(CHANNEL, f"{MENTION} one", author=ALICE)
            job_id, _ = await worker.take()
            _done(worker, job_id, "A.", prompt_tokens=60, completion_tokens=30)
            await fake_.wait_for(lambda: contents(fake_, int(q["id"])) == ["A."])

            await fake_.user_says(int(q["id"]), "two", author=ALICE)
            job_id, _ = await worker.take()
            _done(worker, job_id, "B.", prompt_tokens=7, completion_tokens=5)
            await fake_.wait_for(lambda: contents(fake_, int(q["id"])) == ["A.", "B."])

            # 102 tokens >= 100: refused, nothing queued.
            msg = await fake_.user_says(int(q["id"]), "three", author=ALICE)
            await fake_.wait_for(lambda: int(msg["id"]) in fake_.handled)
            assert "daily allowance of 100 tokens" in contents(fake_, int(q["id"]))[-1]
            assert worker.queue.count == 0
            await fake_.interact(CHANNEL, "ask", {"question": "please"}, user=ALICE)
            await fake_.wait_for(lambda: any("allowance" in t for t in ephemeral_texts(fake_)))
            assert worker.queue.count == 0

            await fake_.interact(CHANNEL, "usage", user=ALICE)
            want = "Your usage today: 102 tokens (67 prompt + 35 answer) of 100 allowed"
            await fake_.wait_for(lambda: want in ephemeral_texts(fake_))
            await fake_.interact(CHANNEL, "usage", user=ADMIN)
            team = f"Team today by user: {ALICE['id']}: 102"
            await fake_.wait_for(lambda: any(team in t for t in ephemeral_texts(fake_)))
            assert any(f"by channel: {CHANNEL}: 102" in t for t in ephemeral_texts(fake_))

    run(scenario())
