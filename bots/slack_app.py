"""What the Slack bot listens to: one table of event -> (ack, handler).

Every listener acks at once (Slack wants an answer within 3 s and re-delivers
otherwise) and does its real work in a Bolt *lazy* handler, which runs as its
own task after the ack was sent. That holds in both Socket Mode and HTTP mode.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from shared.contract import conversation_key

from .slack_answer import Answerer, BotIdentity, Incoming
from .slack_history import ASK_EVENT, slack_to_plain
from .slack_mrkdwn import escape

log = logging.getLogger(__name__)

RESET_WORDS = frozenset({"reset", "forget", "/reset"})
# User messages with these subtypes are still someone talking to us; every other
# subtype (edits, deletions, joins, bot_message…) is not.
USER_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})

ASK_USAGE = "Usage: `/ask <question>`; `/ask reset` inside a thread forgets that thread."
RESET_HOWTO = (
    "Each thread is its own conversation. To forget one, reply in that thread with "
    "`@corral reset` (or run `/ask reset` there). A new thread always starts fresh."
)
RESET_DONE = "Done: I've forgotten this conversation. The next message starts fresh."
NOT_ALLOWED = "corral isn't enabled in this channel."
NOT_IN_CHANNEL = "I can't post here yet: invite me first with `/invite @corral`."


def register_listeners(app: AsyncApp, answerer: Answerer) -> None:
    """Wire the allow-list and the listeners table into the app."""
    handlers = _Handlers(answerer)
    app.middleware(handlers.allow_list)
    listeners: list[tuple[Callable[..., Any], Callable[..., Awaitable[None]], Any]] = [
        (app.event("app_mention"), _just_ack, handlers.on_mention),
        (app.event("message"), _just_ack, handlers.on_message),
        (app.command("/ask"), handlers.ack_ask, handlers.on_ask),
    ]
    for register, ack, handler in listeners:
        register(ack=ack, lazy=[handler])


async def _just_ack(ack: AsyncAck) -> None:
    await ack()


def _bot(context: AsyncBoltContext) -> BotIdentity:
    return BotIdentity(user_id=context.bot_user_id or "", bot_id=context.bot_id or "")


class _Handlers:
    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer
        self.state = answerer.state
        self.turns = answerer.turns
        self.slack = answerer.slack

    async def allow_list(
        self, context: AsyncBoltContext, body: dict[str, Any], next_: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        channel = context.channel_id or ""
        if not channel:
            return await next_()  # nothing channel-bound (e.g. app_home_opened)
        event = body.get("event") or {}
        is_dm = channel.startswith("D") or event.get("channel_type") == "im"
        # The installing workspace: context.team_id comes from auth.test, not the request.
        team = str(body.get("team_id") or (body.get("team") or {}).get("id") or "")
        if self.slack.channel_allowed(team, channel, is_dm):
            return await next_()
        # Answer 200 so Slack does not retry; a slash command shows the text to its user only.
        return BoltResponse(status=200, body=NOT_ALLOWED if "command" in body else "")

    async def on_mention(
        self, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        event = body["event"]
        if event.get("bot_id") or event.get("subtype") not in (None, *USER_SUBTYPES):
            return  # other bots mentioning us: never start a bot-to-bot loop
        if not await self._first_delivery(body, event):
            return
        bot = _bot(context)
        thread = event.get("thread_ts") or event["ts"]
        await self._answer_or_reset(body, event, bot, client, thread, in_thread=True)

    async def on_message(
        self, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
    ) -> None:
        event = body["event"]
        if event.get("bot_id") or event.get("subtype", "") not in USER_SUBTYPES:
            return
        bot = _bot(context)
        if not event.get("user") or event.get("user") == bot.user_id:
            return
        thread = event.get("thread_ts") or ""
        if event.get("channel_type") == "im":
            # A DM is one conversation at the top level; a thread in it is its own.
            in_thread = bool(thread)
        else:
            if not thread or f"<@{bot.user_id}>" in (event.get("text") or ""):
                return  # top-level chatter is not for us; mentions come as app_mention
            if not await self._in_thread(event, bot, thread):
                return
            in_thread = True
        if not await self._first_delivery(body, event):
            return
        await self._answer_or_reset(body, event, bot, client, thread, in_thread=in_thread)

    async def ack_ask(self, ack: AsyncAck, command: dict[str, Any]) -> None:
        text = (command.get("text") or "").strip()
        if not text:
            await ack(text=ASK_USAGE)
        elif text.lower() in RESET_WORDS and not _command_conversation(command):
            await ack(text=RESET_HOWTO)
        else:
            await ack()

    async def on_ask(
        self,
        command: dict[str, Any],
        context: AsyncBoltContext,
        client: AsyncWebClient,
        respond: AsyncRespond,
    ) -> None:
        question = (command.get("text") or "").strip()
        channel, user = command["channel_id"], command["user_id"]
        if not question:
            return
        if question.lower() in RESET_WORDS:
            conversation = _command_conversation(command)
            if conversation is not None:
                await self.turns.reset(conversation)
                await respond(text=RESET_DONE, response_type="ephemeral")
            return
        try:
            # The question becomes the thread root, so the channel sees what was asked.
            root = await client.chat_postMessage(
                channel=channel,
                text=f"<@{user}> asked: {escape(question)}",
                metadata={"event_type": ASK_EVENT, "event_payload": {"question": question}},
            )
        except SlackApiError as exc:
            log.warning("slack: /ask could not post in %s: %s", channel, exc.response.get("error"))
            await respond(text=NOT_IN_CHANNEL, response_type="ephemeral")
            return
        ts = str(root["ts"])
        await self.state.claim_message(channel, ts)  # our own root: never answer it twice
        msg = Incoming(
            team=command.get("team_id", ""),
            channel=channel,
            user=user,
            ts=ts,
            text=question,
            thread_ts=ts,
        )
        await self.answerer.answer(client, msg, _bot(context))

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
        msg = Incoming(
            team=str(body.get("team_id") or event.get("team") or ""),
            channel=event["channel"],
            user=event.get("user", ""),
            ts=event["ts"],
            text=text,
            thread_ts=thread,
            reply_in_thread=in_thread,
        )
        if text.lower() in RESET_WORDS:
            await self.turns.reset(msg.conversation)
            await client.chat_postMessage(
                channel=msg.channel, thread_ts=thread or None, text=RESET_DONE
            )
            return
        if not text:
            # A bare mention: greet rather than send the model nothing.
            msg = dataclasses.replace(msg, text="Hello!")
        await self.answerer.answer(client, msg, bot)


def _command_conversation(command: dict[str, Any]) -> str | None:
    """The conversation a slash command runs in, when it has one we can name."""
    channel = command.get("channel_id", "")
    thread = command.get("thread_ts") or ""
    if thread:
        return conversation_key("slack", channel, thread)
    if channel.startswith("D"):
        return conversation_key("slack", channel)  # a DM's top level is one conversation
    return None
