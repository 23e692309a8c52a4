"""How many project modules one message walks through, and that none is re-entered.

A profiler records every project function called (in every thread) while one
Discord mention, one Slack mention and one /api/chat request are answered; a
module is re-entered when it appears twice on one call stack with another
module in between (A -> B -> A). The ceilings keep the path from growing back.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from fakes.discord_harness import StandInWorker
from fakes.discord_harness import running_bot as running_discord
from fakes.discord_server import BOT_ID
from fakes.slack_harness import FakeWorker, event_body, mention
from fakes.slack_harness import running_bot as running_slack
from redis import Redis
from test_api_fixtures import MODEL, ServerThread
from test_api_fixtures import FakeWorker as ApiWorker

from bots.discord.settings import DiscordSettings
from shared.settings import Settings

pytest_plugins = ["test_api_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tuple(str(ROOT / part) + "/" for part in ("bots", "shared", "worker", "corral"))
# Project modules on the path of one message. Issue 19's goal is 10: a Discord mention
# meets it (the queue's admission control and message index live in shared/turnqueue.py,
# the one module that puts a turn on the queue). One more is allowed there because the
# finished answer's message is remembered for its 👍/👎 votes (shared/feedback.py), which
# falls inside the measured window or just after it, depending on scheduling.
# A Slack mention adds the asker's display name (users.info, cached: bots/slack/people.py,
# so shared threads name speakers) and Slack's mrkdwn rendering (bots/slack/mrkdwn.py).
# The API path adds the caller's key (bots/api/callers.py, reading corral.yaml's keys and
# aliases through shared/team_config.py), the model routing (bots/api/models.py) and
# reading the request's format, stop texts and tools (bots/api/decoding.py).
CEILING = {"discord mention": 11, "slack mention": 12, "/api/chat": 13}

CHANNEL = 800_000_000_000_000_010  # the fake guild's first text channel


TESTS = str(ROOT / "tests") + "/"
_LOOP_STEP = asyncio.events.Handle._run.__code__  # runs one task step or callback


def module_of(frame: FrameType) -> str | None:
    name = frame.f_code.co_filename
    return name.removeprefix(str(ROOT) + "/") if name.startswith(PROJECT) else None


class PathRecorder:
    def __init__(self) -> None:
        self.modules: list[str] = []  # in order of first use
        self.reentered: set[tuple[str, ...]] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        here = module_of(frame)
        if here is None:
            return
        chain: list[str] = []
        walk: FrameType | None = frame
        while walk is not None and walk.f_code is not _LOOP_STEP:  # one callback of the loop
            if walk.f_code.co_filename.startswith(TESTS):
                return  # the test playing the user or the worker, not the bot's path
            module = module_of(walk)
            if module is not None and (not chain or chain[-1] != module):
                chain.append(module)
            walk = walk.f_back
        if here not in self.modules:
            self.modules.append(here)
        if len(set(chain)) < len(chain):
            self.reentered.add(tuple(reversed(chain)))


@contextmanager
def recording(loop: asyncio.AbstractEventLoop | None = None) -> Iterator[PathRecorder]:
    """Profile this thread, threads started meanwhile, and ``loop``'s thread."""
    recorder = PathRecorder()
    threading.setprofile(recorder)
    sys.setprofile(recorder)
    if loop is not None:
        loop.call_soon_threadsafe(sys.setprofile, recorder)
    try:
        yield recorder
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        if loop is not None:
            loop.call_soon_threadsafe(sys.setprofile, None)


def report(name: str, recorder: PathRecorder) -> None:
    print(f"\n{name}: {len(recorder.modules)} modules: {', '.join(recorder.modules)}")
    assert not recorder.reentered, sorted(recorder.reentered)
    assert len(recorder.modules) <= CEILING[name], recorder.modules


def test_discord_mention(settings: Settings, redis_conn: Redis) -> None:
    worker = StandInWorker(redis_conn)
    config = DiscordSettings(edit_interval=0.1, _env_file=None)  # type: ignore[call-arg]

    async def scenario() -> PathRecorder:
        async with running_discord(settings, config) as (fake, _bot):
            with recording() as recorder:
                question = await fake.user_says(CHANNEL, f"<@{BOT_ID}> how do I rotate logs?")
                job_id, _ = await worker.take()
                worker.answer(job_id, "Use logrotate.")
                thread = int(question["id"])
                await fake.wait_for(
                    lambda: [m["content"] for m in fake.bot_messages(thread)] == ["Use logrotate."]
                )
            return recorder

    report("discord mention", asyncio.run(scenario()))


def test_slack_mention(settings: Settings, redis_conn: Redis, redis_url: str) -> None:
    worker = FakeWorker(redis_conn)

    async def scenario() -> PathRecorder:
        async with running_slack(settings, redis_url) as bot:
            with recording() as recorder:
                await bot.send_event(event_body(mention("how do I rotate logs?", ts="5.0")))
                job_id, _ = await worker.take()
                worker.answer(job_id, "Use logrotate.")
                await bot.fake.wait_for(
                    lambda: (
                        [m.text for m in bot.fake.bot_messages("C1", "5.0")] == ["Use logrotate."]
                    )
                )
            return recorder

    report("slack mention", asyncio.run(scenario()))


def test_api_chat(api: ServerThread, fake_worker: ApiWorker) -> None:
    messages = '"messages": [{"role": "user", "content": "hi"}]'
    body = f'{{"model": "{MODEL}", {messages}, "stream": false}}'.encode()
    request = urllib.request.Request(f"{api.url}/api/chat", data=body, method="POST")
    with recording(api.loop) as recorder:
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    report("/api/chat", recorder)
