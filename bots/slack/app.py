"""What the Slack bot listens to: one table of event -> (ack, handler).

Every listener acks at once (Slack wants an answer within 3 s and re-delivers
otherwise) and does its real work in a Bolt *lazy* handler, which runs as its
own task after the ack was sent. That holds in both Socket Mode and HTTP mode.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.answer import Pipeline
from bots.attachments import text_for_files
from bots.slack.assistant import Pane, assistant_pane, pane_context
from bots.slack.commands import NOT_ALLOWED, RESET_DONE, RESET_WORDS, AskCommand, Host
from bots.slack.mrkdwn import slack_to_plain
from bots.slack.native_stream import NativeReply
from bots.slack.people import slack_author
from bots.slack.settings import SlackSettings
from bots.slack.state import SlackState
from bots.slack.surface import (
    WORDING,
    BotIdentity,
    Incoming,
    SlackSurface,
    bot_identity,
    feedback_blocks,
    question_of,
)
from shared.contract import conversation_key
from shared.permissions import Actor

log = logging.getLogger(__name__)

# User messages with these subtypes are still someone talking to us; every other
# subtype (edits, joins, bot_message…) is not. A deletion (DELETED) only cancels the
# turn that message started, if any.
USER_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})
DELETED = "message_deleted"

GROUP_CACHE_S = 60.0  # how long a user group's member list is trusted


def register_listeners(
    app: AsyncApp, pipeline: Pipeline, slack: SlackSettings, state: SlackState
) -> Host:
    """Wire the allow-list and the listeners table into the app; returns what the
    other Slack features (bots/slack/extras.py) share with the listeners."""
    handlers = _Handlers(pipeline, slack, state)
    ask = AskCommand(handlers)
    app.middleware(handlers.allow_list)
    listeners: list[tuple[Callable[..., Any], Callable[..., Awaitable[None]], Any]] = [
        (app.event("app_mention"), _just_ack, handlers.on_mention),
        (app.event("message"), _just_ack, handlers.on_message),
        (app.command("/ask"), ask.ack, ask.run),
    ]
    for register, ack, handler in listeners:
        register(ack=ack, lazy=[handler])
    return handlers


async def _just_ack(ack: AsyncAck) -> None:
    await ack()


def native_wanted(mode: str, thread: str | None, in_pane: bool) -> bool:
    """Stream with Slack's native streaming? "auto": in the assistant pane, "on": every
    threaded answer, "off": never. A stream is always a reply, so a top-level DM answer
    keeps the chat.update path (as does any place where Slack refuses to stream)."""
    return bool(thread) and (mode == "on" or (mode == "auto" and in_pane))


class _Handlers:
    """The event listeners, and what /ask shares with them (see commands.Host)."""

    def __init__(self, pipeline: Pipeline, slack: SlackSettings, state: SlackState) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self.state = state
        self.turns = pipeline.turns
        self.slack = slack
        self.team = pipeline.team
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}  # group -> (read at, users)

    async def allow_list(
        self, context: AsyncBoltContext, body: dict[str, Any], next_: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        channel = context.channel_id or ""
        if not channel:
            await next_()  # nothing channel-bound (e.g. app_home_opened)
            return None
        event = body.get("event") or {}
        is_dm = channel.startswith("D") or event.get("channel_type") == "im"
        # The installing workspace: context.team_id comes from auth.test, not the request.
        workspace = str(body.get("team_id") or (body.get("team") or {}).get("id") or "")
        place = self.team.decide(Actor("slack", "", workspace, channel, is_dm=is_dm))
        if place.scope != "place":  # who is asking is checked once we know it is for us
            await next_()
            return None
        # Answer 200 so Slack does not retry; a slash command shows the text to its user only.
        return BoltResponse(status=200, body=NOT_ALLOWED if "command" in body else "")

    async def on_mention(
        self, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        event = body["event"]
        if event.get("bot_id") or event.get("subtype") not in (None, *USER_SUBTYPES):
            return  # other bots mentioning us: never start a bot-to-bot loop
        thread = event.get("thread_ts") or event["ts"]
        async with self._said_if_redis_down(client, event["channel"], thread):
            if not await self._first_delivery(body, event):
                return
            bot = bot_identity(context)
            await self._answer_or_reset(body, event, bot, client, thread, in_thread=True)

    async def on_message(
        self, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        event = body["event"]
        if event.get("subtype") == DELETED:
            await self._on_deleted(event)
            return
        if event.get("bot_id") or event.get("subtype", "") not in USER_SUBTYPES:
            return
        bot = bot_identity(context)
        if not event.get("user") or event.get("user") == bot.user_id:
            return
        thread = event.get("thread_ts") or ""
        if event.get("channel_type") == "im":
            # A DM is one conversation at the top level; a thread in it is its own.
            in_thread = bool(thread)
        else:
            if not thread or f"<@{bot.user_id}>" in (event.get("text") or ""):
                return  # top-level chatter is not for us; mentions come as app_mention
            # Redis down even after retries: we cannot tell whether it is for us, so
            # stay silent (a mention comes as app_mention, which is answered).
            if not await self._in_thread(event, bot, thread):
                return
            in_thread = True
        async with self._said_if_redis_down(client, event["channel"], thread or None):
            if not await self._first_delivery(body, event):
                return
            await self._answer_or_reset(body, event, bot, client, thread, in_thread=in_thread)

    @contextlib.asynccontextmanager
    async def _said_if_redis_down(
        self, client: AsyncWebClient, channel: str, thread: str | None
    ) -> AsyncIterator[None]:
        """Redis stayed down through the client's retries (bots/client.py) before the
        question was queued: say so in one line rather than leave the asker in silence.
        (Once queued, the pipeline speaks for itself.)"""
        try:
            yield
        except RedisError as exc:
            log.warning("slack: Redis is unavailable (%s); told the asker", type(exc).__name__)
            await client.chat_postMessage(
                channel=channel, thread_ts=thread, text=WORDING.queue_down
            )

    async def _on_deleted(self, event: dict[str, Any]) -> None:
        """A deleted message cancels the turn it started (queued or running), if any."""
        previous = event.get("previous_message") or {}
        ts = event.get("deleted_ts") or previous.get("ts")
        channel = event.get("channel")
        if not ts or not channel:
            return
        if await self.turns.cancel_for_message("slack", str(channel), str(ts)):
            log.info("slack: cancelled the turn of deleted message %s in %s", ts, channel)

    async def _first_delivery(self, body: dict[str, Any], event: dict[str, Any]) -> bool:
        """Drop Slack's retries (same event id) and the twin event of the same message."""
        if not await self.state.claim_event(str(body.get("event_id") or "")):
            return False
        return await self.state.claim_message(event["channel"], event["ts"])

    async def _in_thread(self, event: dict[str, Any], bot: BotIdentity, thread: str) -> bool:
        """Is the bot part of this thread? Cheap checks only: no Slack API call per message."""
        if event.get("parent_user_id") == bot.user_id:
            return True  # a thread under one of our messages (e.g. an /ask root)
        if await self.state.in_thread(event["channel"], thread):
            return True
        return await self.turns.has_history(conversation_key("slack", event["channel"], thread))

    async def _answer_or_reset(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        bot: BotIdentity,
        client: AsyncWebClient,
        thread: str,
        *,
        in_thread: bool,
    ) -> None:
        text = slack_to_plain(event.get("text") or "", bot.user_id)
        workspace = str(body.get("team_id") or event.get("team") or "")
        channel, user, files = event["channel"], event.get("user", ""), event.get("files") or ()
        is_dm = event.get("channel_type") == "im" or channel.startswith("D")
        refusal = await self.refusal(client, workspace, channel, user, is_dm)
        if refusal is not None:
            if refusal:  # only the refused user sees it; nothing is enqueued
                await client.chat_postEphemeral(
                    channel=channel, user=user, text=refusal, thread_ts=thread or None
                )
            return
        if text.lower() in RESET_WORDS:
            await self.turns.reset(conversation_key("slack", channel, thread))
            await client.chat_postMessage(
                channel=channel, thread_ts=thread or None, text=RESET_DONE
            )
            return
        if not text:
            # A bare mention: greet rather than send the model nothing.
            kinds = [(str(f.get("name") or ""), str(f.get("mimetype") or "")) for f in files]
            text = text_for_files(kinds) if files else "Hello!"
        msg = Incoming(workspace, channel, user, event["ts"], text, thread, in_thread, files)
        await self.answer(client, bot, msg)

    async def answer(self, client: AsyncWebClient, bot: BotIdentity, msg: Incoming) -> None:
        """Answer ``msg`` through the pipeline."""
        if msg.thread_ts:  # follow-ups in this thread need no mention
            await self.state.join_thread(msg.channel, msg.thread_ts)
        thread = msg.thread_ts if msg.reply_in_thread else None
        surface = SlackSurface(
            client,
            msg.channel,
            thread,
            interval=self.slack.update_interval,
            limit=self.slack.max_message_chars,
            bot=bot,
            asked_ts=msg.ts,
            history_limit=self.slack.history_limit,
        )
        pane, context, redis = None, "", self.turns.aredis
        if thread and msg.channel.startswith("D"):  # the assistant pane lives in the app's DM
            pane = await assistant_pane(client, redis, msg.channel, thread, msg.text)
        if pane is not None:  # which channel the user is looking at, told to the model
            context = await pane_context(client, redis, msg.channel, pane.thread_ts)
        author = await slack_author(client, msg.user)  # shared threads name each speaker
        question = question_of(client, msg, author, context)
        view = None
        if native_wanted(self.slack.native_streaming, thread, pane is not None):
            view = self._native(surface, msg, pane)
        await self.pipeline.answer(question, surface, view)

    def _native(self, surface: SlackSurface, msg: Incoming, pane: Pane | None) -> NativeReply:
        return NativeReply(
            surface,
            recipient_user=msg.user,  # in a channel, Slack must know whom the stream answers
            recipient_team=msg.workspace,
            interval=self.slack.stream_interval,
            on_status=pane.set_status if pane else None,
            final_blocks=feedback_blocks,
        )

    async def roles(self, client: AsyncWebClient, user: str) -> frozenset[str]:
        """The configured user groups (allow or block lists) this user belongs to."""
        perms = self.team.config.permissions
        found = set()
        for group in sorted(set(perms.allow.roles) | set(perms.block.roles)):
            read_at, members = self._groups.get(group, (0.0, frozenset()))
            if time.monotonic() - read_at > GROUP_CACHE_S:
                try:
                    reply = await client.usergroups_users_list(usergroup=group)
                    members = frozenset(reply.get("users") or ())
                    self._groups[group] = (time.monotonic(), members)
                except SlackApiError as exc:
                    log.warning(
                        "slack: cannot read user group %s: %s", group, exc.response.get("error")
                    )
            if user in members:
                found.add(group)
        return frozenset(found)

    async def refusal(
        self, client: AsyncWebClient, workspace: str, channel: str, user: str, is_dm: bool
    ) -> str | None:
        """Why this user gets no answer ("" = refused silently), or None to go ahead."""
        roles = await self.roles(client, user)
        decision = self.team.decide(Actor("slack", user, workspace, channel, roles, is_dm))
        return await self.team.refusal(decision, user)
