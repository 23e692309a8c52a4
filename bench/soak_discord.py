"""The soak's Discord conversations: the real discord.py bot against the fake Discord.

Like bench/soak_slack.py, in its own thread and event loop inside the soak process
(tests/fakes/discord_harness): each conversation is a thread the bot opens on the
first mention in a channel; later questions are mentions in that thread, a few
seconds apart without waiting for the answers. One bot message per question is
right (the bot posts a placeholder and edits it); more bot messages than questions
in a thread is an answer shown twice. (In-process: "kill api" does not reach it.)
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from common import ROOT
from redis import Redis
from soak_slack import judge_questions

from bots.discord.settings import DiscordSettings
from shared.settings import Settings
from shared.turn_index import job_for

sys.path.insert(0, str(ROOT / "tests"))
from fakes.discord_harness import running_bot
from fakes.discord_server import BOT_ID

CHANNEL = 800_000_000_000_000_010  # the fake guild's first text channel


@dataclass
class DiscordQuestion:
    conversation: str  # the thread's id
    message_id: str
    sent: float  # wall clock


@dataclass
class DiscordSoak:
    settings: Settings
    redis_url: str
    conversations: int
    stop_at: float
    seed: int
    max_turns: int
    asked: list[DiscordQuestion] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)  # thread id -> bot messages
    _done: threading.Event = field(default_factory=threading.Event)
    _drain_until: float = 0.0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        thread.start()
        return thread

    def finish(self, drain_until: float) -> None:
        self._drain_until = drain_until
        self._done.set()

    async def _run(self) -> None:
        config = DiscordSettings(edit_interval=0.5, _env_file=None)  # type: ignore[call-arg]
        async with running_bot(self.settings, config) as (fake, _bot):
            await asyncio.gather(*(self._converse(fake, i) for i in range(self.conversations)))
            while not self._done.is_set():
                await asyncio.sleep(0.2)
            conn = Redis.from_url(self.redis_url)
            while time.time() < self._drain_until and judge_discord(conn, self)["unsettled"]:
                await asyncio.sleep(1)
            for question in self.asked:
                thread = int(question.conversation)
                self.replies[question.conversation] = len(fake.bot_messages(thread))

    async def _converse(self, fake: Any, index: int) -> None:
        rng = random.Random(self.seed * 4000 + index)
        thread = 0
        n = 0
        while time.time() < self.stop_at and len(self.asked) < self.max_turns:
            text = f"<@{BOT_ID}> question {n} of conversation {index}: say hi"
            sent = time.time()
            message = await fake.user_says(thread or CHANNEL, text)
            if not thread:
                thread = int(message["id"])  # the bot opens a thread on the question
                try:
                    await fake.wait_for(lambda opened=thread: opened in fake.channels, timeout=120)
                except TimeoutError:
                    return  # never opened: the question counts as unanswered below
            self.asked.append(DiscordQuestion(str(thread), str(message["id"]), sent))
            n += 1
            await asyncio.sleep(rng.uniform(1.0, 6.0))


def judge_discord(conn: Redis, soak: DiscordSoak) -> dict[str, Any]:
    def job(question: DiscordQuestion) -> str | None:
        # Indexed under the channel the question was asked in: the parent or the thread.
        for channel in (str(CHANNEL), question.conversation):
            found = job_for(conn, "discord", channel, question.message_id)
            if found:
                return found
        return None

    return judge_questions(conn, soak.asked, job, soak.replies)
