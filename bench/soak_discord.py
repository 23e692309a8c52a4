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
import time
from dataclasses import dataclass
from typing import Any

from common import ROOT
from redis import Redis
from soak_platform import PlatformSoak, Question

from bots.discord.settings import DiscordSettings
from shared.turn_index import job_for

sys.path.insert(0, str(ROOT / "tests"))
from fakes.discord_harness import running_bot
from fakes.discord_server import BOT_ID

CHANNEL = 800_000_000_000_000_010  # the fake guild's first text channel


@dataclass
class DiscordSoak(PlatformSoak):
    async def _run(self) -> None:
        config = DiscordSettings(edit_interval=0.5, _env_file=None)  # type: ignore[call-arg]
        async with running_bot(self.settings, config) as (fake, _bot):
            await self._converse_all([self._converse(fake, i) for i in range(self.conversations)])
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
            self.asked.append(Question(str(thread), str(message["id"]), sent))
            n += 1
            await asyncio.sleep(rng.uniform(*self.pause))

    def find_job(self, conn: Redis, question: Question) -> str | None:
        # Indexed under the channel the question was asked in: the parent or the thread.
        for channel in (str(CHANNEL), question.conversation):
            found = job_for(conn, "discord", channel, question.message_id)
            if found:
                return found
        return None


def judge_discord(conn: Redis, soak: DiscordSoak) -> dict[str, Any]:
    return soak.judge(conn)
