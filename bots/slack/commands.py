"""The Slack slash command `/ask`: a question, `reset`, `cancel`, or a team control
(`settings`, `usage`, `model [NAME]`, `system [TEXT]`).

Acked at once with a usage line when that is all it needs; the rest runs as a
Bolt lazy handler and answers the user ephemerally, or posts the question as a
thread root and answers it there like a mention.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.client import TurnClient
from bots.slack.mrkdwn import escape
from bots.slack.state import SlackState
from bots.slack.surface import ASK_EVENT, BotIdentity, Incoming, bot_identity
from bots.team import TeamControls
from shared.contract import conversation_key
from shared.permissions import Actor
from shared.settings import Settings

log = logging.getLogger(__name__)

RESET_WORDS = frozenset({"reset", "forget", "/reset"})
CANCEL_WORDS = frozenset({"cancel", "/cancel"})
ASK_USAGE = (
    "Usage: `/ask <question>`; `/ask reset` inside a thread forgets that thread; "
    "`/ask cancel` stops your latest unanswered question here."
)
RESET_HOWTO = (
    "Each thread is its own conversation. To forget one, reply in that thread with "
    "`@corral reset` (or run `/ask reset` there). A new thread always starts fresh."
)
RESET_DONE = "Done: I've forgotten this conversation. The next message starts fresh."
CANCEL_DONE = "Cancelled your latest question in this channel."
NOTHING_TO_CANCEL = "You have no unanswered question in this channel to cancel."
NOT_ALLOWED = "corral isn't enabled in this channel."
NOT_IN_CHANNEL = "I can't post here yet: invite me first with `/invite @corral`."


class Host(Protocol):
    """What /ask shares with the event listeners (so this module never imports them)."""

    settings: Settings
    turns: TurnClient
    team: TeamControls
    state: SlackState

    async def roles(self, client: AsyncWebClient, user: str) -> frozenset[str]: ...

    async def refusal(
        self, client: AsyncWebClient, workspace: str, channel: str, user: str, is_dm: bool
    ) -> str | None: ...

    async def answer(self, client: AsyncWebClient, bot: BotIdentity, msg: Incoming) -> None: ...


class AskCommand:
    def __init__(self, host: Host) -> None:
        self.host = host

    async def ack(self, ack: AsyncAck, command: dict[str, Any]) -> None:
        text = (command.get("text") or "").strip()
        if not text:
            await ack(text=ASK_USAGE)
        elif text.lower() in RESET_WORDS and not _command_conversation(command):
            await ack(text=RESET_HOWTO)
        else:
            await ack()

    async def run(
        self,
        command: dict[str, Any],
        context: AsyncBoltContext,
        client: AsyncWebClient,
        respond: AsyncRespond,
    ) -> None:
        host = self.host
        question = (command.get("text") or "").strip()
        channel, user = command["channel_id"], command["user_id"]
        workspace, is_dm = command.get("team_id", ""), channel.startswith("D")
        if not question:
            return
        if question.lower() in CANCEL_WORDS:
            # Your own turns only, wherever the bot is switched on: no permission check.
            cancelled = await host.turns.cancel_latest("slack", channel, user)
            text = CANCEL_DONE if cancelled else NOTHING_TO_CANCEL
            await respond(text=text, response_type="ephemeral")
            return
        word, _, rest = question.partition(" ")
        if _is_control(word.lower(), rest.strip()):
            roles = await host.roles(client, user)
            decision = host.team.decide(Actor("slack", user, workspace, channel, roles, is_dm))
            if decision.allowed:
                reply = await host.team.control(word.lower(), rest, channel, user, host.settings)
            else:
                reply = host.team.refusal_text() if decision.notify else NOT_ALLOWED
            await respond(text=reply, response_type="ephemeral")
            return
        refusal = await host.refusal(client, workspace, channel, user, is_dm)
        if refusal is not None:  # nothing is enqueued; a silent refusal still answers the command
            await respond(text=refusal or NOT_ALLOWED, response_type="ephemeral")
            return
        if question.lower() in RESET_WORDS:
            conversation = _command_conversation(command)
            if conversation is not None:
                await host.turns.reset(conversation)
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
        await host.state.claim_message(channel, ts)  # our own root: never answer it twice
        msg = Incoming(workspace, channel, user, ts, question, thread_ts=ts)
        await host.answer(client, bot_identity(context), msg)


def _is_control(word: str, rest: str) -> bool:
    """`/ask settings`, `/ask usage`, `/ask model [NAME]`, `/ask system [TEXT]`."""
    if word in ("settings", "usage"):
        return not rest
    if word == "model":
        return len(rest.split()) <= 1
    return word == "system"


def _command_conversation(command: dict[str, Any]) -> str | None:
    """The conversation a slash command runs in, when it has one we can name."""
    channel = command.get("channel_id", "")
    thread = command.get("thread_ts") or ""
    if thread:
        return conversation_key("slack", channel, thread)
    if channel.startswith("D"):
        return conversation_key("slack", channel)  # a DM's top level is one conversation
    return None
