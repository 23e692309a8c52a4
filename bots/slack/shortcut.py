"""The "Summarize thread" message shortcut.

Picked on any message, it answers in that message's thread with a summary of
the thread (history rebuilt from Slack when the conversation store has none).
The same permissions and quotas as a question apply; a refusal is shown only
to the person who asked.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.commands import Host
from bots.slack.surface import Incoming, bot_identity

log = logging.getLogger(__name__)

CALLBACK_ID = "corral_summarize"  # as in slack/manifest.yml
SUMMARY_REQUEST = (
    "Summarize this thread for someone who has not read it: the question or topic, "
    "what was decided or answered, and what is still open. Name who said what."
)
NOT_ALLOWED = "corral isn't enabled here."
CANNOT_READ = "I can't read this thread: invite me to the channel first with `/invite @corral`."


async def _can_read(client: AsyncWebClient, channel: str, root: str) -> bool:
    """Can the bot read the thread (is it in the channel)? A summary needs the messages."""
    try:
        await client.conversations_replies(channel=channel, ts=root, limit=1)
    except SlackApiError as exc:
        log.info("slack: cannot read thread %s in %s: %s", root, channel, exc.response.get("error"))
        return False
    return True


def register_summarize(app: AsyncApp, host: Host) -> None:
    async def ack_shortcut(ack: AsyncAck) -> None:
        await ack()

    async def summarize(
        body: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        message = body.get("message") or {}
        channel = str((body.get("channel") or {}).get("id") or "")
        user = str((body.get("user") or {}).get("id") or "")
        team = str((body.get("team") or {}).get("id") or "")
        root = str(message.get("thread_ts") or message.get("ts") or "")
        if not (channel and user and root):
            return
        refusal = await host.refusal(client, team, channel, user, channel.startswith("D"))
        if refusal is None and not await _can_read(client, channel, root):
            refusal = CANNOT_READ
        if refusal is not None:  # a shortcut always answers the one who used it
            try:
                await client.chat_postEphemeral(
                    channel=channel, user=user, text=refusal or NOT_ALLOWED
                )
            except SlackApiError as exc:
                log.info("slack: could not refuse a shortcut: %s", exc.response.get("error"))
            return
        # "Now" as the message: every message of the thread comes before it.
        now = f"{time.time():.6f}"
        asked = Incoming(team, channel, user, now, SUMMARY_REQUEST, thread_ts=root)
        await host.answer(client, bot_identity(context), asked)

    app.shortcut(CALLBACK_ID)(ack=ack_shortcut, lazy=[summarize])
