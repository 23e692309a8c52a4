"""Drive the real Slack bot over real HTTP: signed requests in, a fake worker behind it.

``running_bot`` serves the real Bolt app (``bots.slack.bot.build_app``) on a
local aiohttp port, with its Web API client pointed at :class:`FakeSlack`.
``FakeWorker`` plays the worker's part: it takes jobs off the RQ queue and
publishes StreamEvents, so a test decides exactly what the "model" says.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from pydantic import SecretStr
from redis import Redis
from rq import Queue
from rq.job import Job
from slack_sdk.web.async_client import AsyncWebClient

from bots.client import TurnClient
from bots.slack.bot import build_app, make_client
from bots.slack.settings import SlackSettings
from shared.contract import StreamEvent, Turn
from shared.settings import Settings
from shared.streams import publish
from shared.team_config import ConfigWatcher, parse_config

from .slack_api import BOT_USER_ID, TEAM_ID, FakeSlack

SIGNING_SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test-token-not-real"
_event_ids = itertools.count(1)


def sign(body: str, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Slack's v0 request signature headers for ``body``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = f"v0:{ts}:{body}".encode()
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


def event_body(event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """An Events API ``event_callback`` envelope around ``event``."""
    return {
        "token": "legacy-unused",
        "team_id": TEAM_ID,
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):08d}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
        "event": event,
    }


def mention(text: str, *, channel: str = "C1", ts: str = "1700000000.000100", **extra: Any):
    return {
        "type": "app_mention",
        "user": "U1",
        "text": f"<@{BOT_USER_ID}> {text}",
        "ts": ts,
        "channel": channel,
        "team": TEAM_ID,
        "event_ts": ts,
        **extra,
    }


def message(text: str, *, channel: str = "C1", ts: str = "1700000000.000200", **extra: Any):
    return {
        "type": "message",
        "user": "U1",
        "text": text,
        "ts": ts,
        "channel": channel,
        "channel_type": "channel",
        "team": TEAM_ID,
        "event_ts": ts,
        **extra,
    }


@dataclass
class Reply:
    status: int
    text: str
    seconds: float


@dataclass
class BotUnderTest:
    fake: FakeSlack
    url: str
    session: aiohttp.ClientSession
    turns: TurnClient

    async def post(self, body: str, headers: dict[str, str], content_type: str) -> Reply:
        started = time.monotonic()
        async with self.session.post(
            self.url, data=body.encode(), headers={**headers, "Content-Type": content_type}
        ) as resp:
            return Reply(resp.status, await resp.text(), time.monotonic() - started)

    async def send_event(
        self, body: dict[str, Any], *, headers: dict[str, str] | None = None, **sign_kw: Any
    ) -> Reply:
        raw = json.dumps(body)
        return await self.post(raw, {**sign(raw, **sign_kw), **(headers or {})}, "application/json")

    async def send_command(self, text: str, *, channel: str = "C1", **fields: str) -> Reply:
        """``/ask text`` as user U1 (``user_id=`` picks another)."""
        form = {
            "token": "legacy-unused",
            "team_id": TEAM_ID,
            "team_domain": "test",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": "U1",
            "user_name": "alice",
            "command": "/ask",
            "text": text,
            "api_app_id": "A1",
            "response_url": self.fake.response_url(),
            "trigger_id": "1.2.3",
            **fields,
        }
        raw = urlencode(form)
        return await self.post(raw, sign(raw), "application/x-www-form-urlencoded")

    def fake_client(self) -> AsyncWebClient:
        """A real Web API client aimed at the fake, as the bot's own."""
        return make_client(BOT_TOKEN, self.fake.api_url)

    async def send_interaction(self, payload: dict[str, Any]) -> Reply:
        """A button click, shortcut… as Slack posts it: a form with one JSON ``payload``."""
        raw = urlencode({"payload": json.dumps(payload)})
        return await self.post(raw, sign(raw), "application/x-www-form-urlencoded")


def button_click(
    action_id: str, value: str, *, channel: str = "C1", message_ts: str = "", user: str = "U1"
) -> dict[str, Any]:
    """A ``block_actions`` payload: ``user`` clicked a button on message ``message_ts``."""
    return {
        "type": "block_actions",
        "team": {"id": TEAM_ID, "domain": "test"},
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
        "api_app_id": "A1",
        "token": "legacy-unused",
        "trigger_id": "1.2.3",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
        "channel": {"id": channel, "name": "general"},
        "message": {"type": "message", "ts": message_ts, "text": ""},
        "response_url": "",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "corral_feedback",
                "value": value,
                "action_ts": str(time.time()),
            }
        ],
    }


def message_shortcut(
    callback_id: str, message: dict[str, Any], *, channel: str = "C1", user: str = "U1"
) -> dict[str, Any]:
    """A ``message_action`` payload: ``user`` picked a message shortcut on ``message``."""
    return {
        "type": "message_action",
        "callback_id": callback_id,
        "team": {"id": TEAM_ID, "domain": "test"},
        "user": {"id": user, "name": user.lower()},
        "channel": {"id": channel, "name": "general"},
        "message": message,
        "message_ts": message["ts"],
        "trigger_id": "1.2.3",
        "response_url": "",
        "token": "legacy-unused",
        "action_ts": str(time.time()),
    }


def assistant_thread_started(
    channel: str = "D1", thread_ts: str = "1700000100.000100", user: str = "U1", **context: str
) -> dict[str, Any]:
    """The user opened the assistant pane (``context``: the channel they look at)."""
    return {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": user,
            "context": context,
            "channel_id": channel,
            "thread_ts": thread_ts,
        },
        "event_ts": thread_ts,
    }


def assistant_context_changed(
    channel: str = "D1", thread_ts: str = "1700000100.000100", user: str = "U1", **context: str
) -> dict[str, Any]:
    return {
        **assistant_thread_started(channel, thread_ts, user, **context),
        "type": "assistant_thread_context_changed",
    }


def app_home_opened(user: str = "U1") -> dict[str, Any]:
    return {"type": "app_home_opened", "user": user, "channel": "D1", "tab": "home"}


@contextlib.asynccontextmanager
async def running_bot(
    settings: Settings,
    redis_url: str,
    slack: SlackSettings | None = None,
    watcher: ConfigWatcher | None = None,
) -> AsyncIterator[BotUnderTest]:
    fake = FakeSlack()
    await fake.start()
    configured = settings.model_copy(
        update={
            "slack_bot_token": SecretStr(BOT_TOKEN),
            "slack_signing_secret": SecretStr(SIGNING_SECRET),
        }
    )
    slack = slack or SlackSettings(update_interval=0.2, _env_file=None)  # type: ignore[call-arg]
    turns = TurnClient(configured, redis_url)
    app = build_app(configured, turns, slack, base_url=fake.api_url, watcher=watcher)
    runner = web.AppRunner(app.web_app(path="/slack/events"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    session = aiohttp.ClientSession()
    try:
        yield BotUnderTest(fake, f"http://127.0.0.1:{port}/slack/events", session, turns)
    finally:
        # Bolt's lazy listeners run as loose tasks; stop them before their Redis goes away.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await session.close()
        await runner.cleanup()
        await turns.close()
        await fake.close()


def run_scenario(
    settings: Settings,
    redis_url: str,
    scenario: Callable[[BotUnderTest], Awaitable[None]],
    config: str = "",
) -> None:
    """Run ``scenario`` against a bot with ``config`` as its corral.yaml (30 s at most)."""
    slack = SlackSettings(update_interval=0.2, stream_interval=0.05, _env_file=None)  # type: ignore[call-arg]
    watcher = ConfigWatcher(None, initial=parse_config(config))

    async def main() -> None:
        async with running_bot(settings, redis_url, slack, watcher) as bot:
            await asyncio.wait_for(scenario(bot), 30)

    asyncio.run(main())


class FakeWorker:
    """Takes turns off the RQ queue and answers them with scripted StreamEvents."""

    def __init__(self, conn: Redis, queue_name: str = "corral-test") -> None:
        self.conn = conn
        self.queue = Queue(queue_name, connection=conn)
        self._seq: dict[str, itertools.count[int]] = {}

    async def take(self, timeout: float = 5.0) -> tuple[str, Turn]:
        """The next queued job (removed from the queue) and its Turn."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job_id = await asyncio.to_thread(self.conn.lpop, self.queue.key)
            if job_id:
                job = Job.fetch(job_id.decode(), connection=self.conn)
                return job.id, Turn.from_payload(job.args[0])
            await asyncio.sleep(0.02)  # RQ has no async "wait for a job"; poll briefly
        raise TimeoutError("no job was enqueued")

    def queued(self) -> int:
        return self.queue.count

    def emit(self, job_id: str, kind: str, text: str = "", **fields: Any) -> None:
        seq = next(self._seq.setdefault(job_id, itertools.count()))
        publish(self.conn, StreamEvent(job_id=job_id, seq=seq, kind=kind, text=text, **fields))

    def answer(self, job_id: str, text: str, pieces: int = 3) -> None:
        """started, the text in ``pieces`` deltas, then done with the whole text."""
        self.emit(job_id, "started")
        step = max(1, -(-len(text) // pieces))
        for start in range(0, len(text), step):
            self.emit(job_id, "delta", text[start : start + step])
        self.emit(job_id, "done", text, finish_reason="stop")
