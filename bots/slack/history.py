"""Slack text for the model, and thread history rebuilt from Slack itself.

The worker's conversation store is the source of truth; Slack is asked only
when the store has nothing for a thread that clearly has earlier messages
(the store expired, or was wiped, or the bot was added to an existing thread).
"""

from __future__ import annotations

import html
import re
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.writer import EMPTY_ANSWER, NO_ANSWER, THINKING
from shared.contract import Message

ASK_EVENT = "corral_ask"  # metadata on the /ask echo, so a rebuild knows it is a user turn
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)\|([^>]+)>")
_BARE = re.compile(r"<((?:https?|mailto):[^|>]+)>")
_CHANNEL = re.compile(r"<#[A-Z0-9]+\|([^>]*)>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)[^>]*>")
_NOT_ANSWERS = (THINKING, EMPTY_ANSWER, NO_ANSWER)


def strip_mention(text: str, bot_user_id: str) -> str:
    return (
        re.sub(rf"<@{re.escape(bot_user_id)}(\|[^>]*)?>", "", text).strip() if bot_user_id else text
    )


def slack_to_plain(text: str, bot_user_id: str = "") -> str:
    """Turn a Slack message into the plain text the model should see."""
    text = strip_mention(text, bot_user_id)
    text = _LINK.sub(r"\2 (\1)", text)
    text = _BARE.sub(r"\1", text)
    text = _CHANNEL.sub(r"#\1", text)
    text = _SPECIAL.sub(r"@\1", text)
    return html.unescape(text).strip()


def to_message(item: dict[str, Any], bot_user_id: str, bot_id: str) -> Message | None:
    """One conversations.replies item as a chat message, or None if it is not part of the talk."""
    text = str(item.get("text") or "")
    metadata = item.get("metadata") or {}
    if metadata.get("event_type") == ASK_EVENT:
        question = str((metadata.get("event_payload") or {}).get("question") or "")
        return Message(role="user", content=question) if question else None
    ours = item.get("user") == bot_user_id or (bot_id and item.get("bot_id") == bot_id)
    if ours:
        if not text or text.startswith((":warning:", ":bulb:", *_NOT_ANSWERS)):
            return None  # placeholders and error notes are not answers
        return Message(role="assistant", content=html.unescape(text))
    if item.get("bot_id") or item.get("subtype"):
        return None  # other bots, joins, edits: not the user's words
    plain = slack_to_plain(text, bot_user_id)
    return Message(role="user", content=plain) if plain else None


async def rebuild_history(
    client: AsyncWebClient,
    channel: str,
    thread_ts: str,
    before_ts: str,
    bot_user_id: str,
    bot_id: str,
    limit: int,
) -> list[Message]:
    """The thread's messages before ``before_ts``, oldest first, with consecutive turns merged."""
    reply = await client.conversations_replies(
        channel=channel, ts=thread_ts, limit=min(limit + 1, 1000), include_all_metadata=True
    )
    items = [m for m in reply.get("messages") or [] if float(m.get("ts", 0)) < float(before_ts)]
    history: list[Message] = []
    for item in items[-limit:]:
        message = to_message(item, bot_user_id, bot_id)
        if message is None:
            continue
        if history and history[-1].role == message.role:
            # Chat templates want alternating roles; a continued answer is one message.
            history[-1] = Message(
                role=message.role, content=f"{history[-1].content}\n\n{message.content}"
            )
        else:
            history.append(message)
    return history
