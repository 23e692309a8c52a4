"""The soak's Slack conversations: the real Bolt app against the fake Slack API (tests/fakes).

Runs in its own thread and event loop inside the soak process: each conversation is
a Slack thread; every question is a signed ``app_mention`` event posted to the bot's
HTTP endpoint, a few seconds apart without waiting for the answer. What users would
see is read back from the fake's record of ``chat.postMessage`` / ``chat.update``:
one bot reply per question is right; more replies than questions in a thread is an
answer shown twice. (The bot runs in-process, so the soak's "kill api" fault does not
reach it.)
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

from shared.turn_index import job_for

sys.path.insert(0, str(ROOT / "tests"))
from fakes.slack_harness import event_body, mention, running_bot

CHANNEL = "C1"


@dataclass
class SlackSoak(PlatformSoak):
    refused: int = 0

    async def _run(self) -> None:
        async with running_bot(self.settings, self.redis_url) as bot:
            await self._converse_all([self._converse(bot, i) for i in range(self.conversations)])
            for question in self.asked:
                posted = bot.fake.bot_messages(CHANNEL, question.conversation)
                self.replies[question.conversation] = len(posted)

    async def _converse(self, bot: Any, index: int) -> None:
        rng = random.Random(self.seed * 3000 + index)
        thread_ts = ""
        n = 0
        while time.time() < self.stop_at and len(self.asked) < self.max_turns:
            ts = f"{1700000000 + index * 10000 + n}.{index:03d}{n:03d}"
            thread_ts = thread_ts or ts
            extra = {"thread_ts": thread_ts} if ts != thread_ts else {}
            event = mention(f"question {n}: say hi", channel=CHANNEL, ts=ts, **extra)
            sent = time.time()
            reply = await bot.send_event(event_body(event))
            if reply.status == 200:
                self.asked.append(Question(thread_ts, ts, sent))
            else:
                self.refused += 1  # e.g. Redis restarting: Slack would deliver it again
            n += 1
            await asyncio.sleep(rng.uniform(*self.pause))

    def find_job(self, conn: Redis, question: Question) -> str | None:
        return job_for(conn, "slack", CHANNEL, question.message_id)


def judge_slack(conn: Redis, soak: SlackSoak) -> dict[str, Any]:
    return soak.judge(conn)
