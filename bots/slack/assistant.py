"""Slack's AI-app surface: the assistant pane (split view and its DM threads).

With ``assistant_view`` in the manifest, Slack opens a side pane where each
conversation is a thread of the app's DM. Bolt's ``Assistant`` middleware
routes the pane's own events here:

* ``assistant_thread_started``: the thread is remembered as a pane thread,
  the suggested prompts of ``corral.yaml`` (``assistant.suggested_prompts``)
  are offered, and the channel the user was looking at is stored;
* ``assistant_thread_context_changed``: the user switched channels; the new
  one is stored.

The user's messages in a pane thread are ordinary DM thread messages, so the
answer pipeline answers them as it answers any DM thread; the listener asks
:func:`assistant_pane` whether the thread is a pane, and if so it shows the
waiting line with ``assistant.threads.setStatus`` ("is thinking…", with the
place in the queue), titles the thread after its first question and streams
natively; :func:`pane_context` tells the model which channel the user
is looking at — its name only, and only when the bot itself may read it.
"""

from __future__ import annotations

import json
import logging
import textwrap
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.assistant.thread_context import AssistantThreadContext
from slack_bolt.context.assistant.thread_context_store.async_store import (
    AsyncAssistantThreadContextStore,
)
from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.team import TeamControls

log = logging.getLogger(__name__)

PREFIX = "corral:slack:pane"
THREAD_TTL_S = 30 * 24 * 3600  # a pane thread is remembered this long after its last use
TITLE_LIMIT = 80


def title_from(question: str) -> str:
    """A pane thread's title: its first question, on one short line."""
    return textwrap.shorten(question, width=TITLE_LIMIT, placeholder="…") or "New chat"


def _key(channel: str, thread_ts: str, what: str) -> str:
    return f"{PREFIX}:{what}:{channel}:{thread_ts}"


class PaneStore(AsyncAssistantThreadContextStore):
    """Pane threads and the channel each one's user is looking at, in Redis.

    (Bolt's default store keeps the context in message metadata of the bot's first
    reply, which does not exist yet when a thread starts.)
    """

    def __init__(self, redis: AsyncRedis, ttl: int = THREAD_TTL_S) -> None:
        self.redis = redis
        self.ttl = ttl

    async def mark(self, channel: str, thread_ts: str) -> None:
        await self.redis.set(_key(channel, thread_ts, "thread"), 1, ex=self.ttl)

    async def is_pane(self, channel: str, thread_ts: str) -> bool:
        return bool(thread_ts) and bool(await self.redis.exists(_key(channel, thread_ts, "thread")))

    async def save(self, *, channel_id: str, thread_ts: str, context: dict[str, str]) -> None:
        clean = {k: str(v) for k, v in (context or {}).items() if isinstance(v, str | int)}
        await self.redis.set(_key(channel_id, thread_ts, "context"), json.dumps(clean), ex=self.ttl)

    async def find(self, *, channel_id: str, thread_ts: str) -> AssistantThreadContext | None:
        raw = await self.redis.get(_key(channel_id, thread_ts, "context"))
        if not raw:
            return None
        data = json.loads(raw)
        return AssistantThreadContext(data) if data.get("channel_id") else None

    async def first_question(self, channel: str, thread_ts: str) -> bool:
        """True once per thread: the first question names it."""
        key = _key(channel, thread_ts, "titled")
        return bool(await self.redis.set(key, 1, nx=True, ex=self.ttl))


@dataclass
class Pane:
    """One assistant pane thread, as the answer pipeline sees it."""

    client: AsyncWebClient
    channel: str
    thread_ts: str

    async def set_status(self, text: str) -> None:
        """The line under the thread while the answer waits or runs ("corral is …")."""
        text = text.strip("_ ")
        if text and not text.startswith("is "):
            text = f"is {text}"  # Slack shows it after the app's name
        await self.client.assistant_threads_setStatus(
            channel_id=self.channel, thread_ts=self.thread_ts, status=text
        )


def register_assistant(app: AsyncApp, store: PaneStore, team: TeamControls) -> AsyncAssistant:
    """The pane's events: suggested prompts on start, the viewed channel kept up to date."""
    assistant = AsyncAssistant(thread_context_store=store)

    @assistant.thread_started
    async def started(payload: dict[str, Any], client: AsyncWebClient) -> None:
        thread = payload.get("assistant_thread") or {}
        channel, thread_ts = str(thread.get("channel_id", "")), str(thread.get("thread_ts", ""))
        if not (channel and thread_ts):
            return
        await store.mark(channel, thread_ts)
        if (thread.get("context") or {}).get("channel_id"):
            await store.save(channel_id=channel, thread_ts=thread_ts, context=thread["context"])
        offer = team.config.assistant
        if not offer.suggested_prompts:
            return
        prompts = [{"title": p.title, "message": p.message} for p in offer.suggested_prompts]
        try:
            await client.assistant_threads_setSuggestedPrompts(
                channel_id=channel, thread_ts=thread_ts, prompts=prompts, title=offer.title or None
            )
        except SlackApiError as exc:  # the pane still works without them
            log.warning("slack: could not set suggested prompts: %s", exc.response.get("error"))

    @assistant.thread_context_changed
    async def context_changed(payload: dict[str, Any]) -> None:
        thread = payload.get("assistant_thread") or {}
        channel, thread_ts = str(thread.get("channel_id", "")), str(thread.get("thread_ts", ""))
        if channel and thread_ts:
            await store.mark(channel, thread_ts)
            await store.save(
                channel_id=channel, thread_ts=thread_ts, context=thread.get("context") or {}
            )

    app.assistant(assistant)
    return assistant


async def assistant_pane(
    client: AsyncWebClient, redis: AsyncRedis, channel: str, thread_ts: str | None, question: str
) -> Pane | None:
    """The pane this answer goes to (None outside the assistant pane).

    The first question of a pane thread also becomes its title.
    """
    store = PaneStore(redis)
    if not thread_ts or not await store.is_pane(channel, thread_ts):
        return None
    if await store.first_question(channel, thread_ts):
        try:
            await client.assistant_threads_setTitle(
                channel_id=channel, thread_ts=thread_ts, title=title_from(question)
            )
        except SlackApiError as exc:
            log.info("slack: could not title the pane thread: %s", exc.response.get("error"))
    return Pane(client, channel, thread_ts)


async def pane_context(
    client: AsyncWebClient, redis: AsyncRedis, channel: str, thread_ts: str
) -> str:
    """Which channel the user of a pane thread is looking at, for the model ("" if none).

    Only the channel's name is told, and only when ``conversations.info`` lets the bot
    read it: a channel the bot is not allowed to see stays unnamed.
    """
    found = await PaneStore(redis).find(channel_id=channel, thread_ts=thread_ts)
    if found is None:
        return ""
    try:
        info = await client.conversations_info(channel=found.channel_id)
        name = str((info.get("channel") or {}).get("name") or "")
    except SlackApiError as exc:
        log.info("slack: not naming channel %s: %s", found.channel_id, exc.response.get("error"))
        name = ""
    if name:
        seen = f"#{name} (channel id {found.channel_id})"
        return f"The user is looking at the Slack channel {seen} while talking to you."
    return "The user is looking at a Slack channel you cannot read."
