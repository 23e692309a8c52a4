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

from bots.slack.people import name_authors
from bots.slack.writer import EMPTY_ANSWER, NO_ANSWER, THINKING
from shared.contract import Author, Message, same_author

ASK_EVENT = "corral_ask"  # metadata on the /ask echo, so a rebuild knows it is a user turn
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)\|([^>]+)>")
_BARE = re.compile(r"<((?:https?|mailto):[^|>]+)>")
_CHANNEL = re.compile(r"<#[A-Z0-9]+\|([^>]*)>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)[^>]*>")
_NOT_ANSWERS = (THINKING, EMPTY_ANSWER, NO_ANSWER)
_ASKER = re.compile(r"^<@([A-Z0-9]+)(?:\|[^>]*)?> asked:")  # the /ask echo names its asker


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
        asker = _ASKER.match(text)
        author = Author(id=asker.group(1)) if asker else None
        return Message(role="user", content=question, author=author) if question else None
    ours = item.get("user") == bot_user_id or (bot_id and item.get("bot_id") == bot_id)
    if ours:
        if not text or text.startswith((":warning:", ":bulb:", *_NOT_ANSWERS)):
            return None  # placeholders and error notes are not answers
        return Message(role="assistant", content=html.unescape(text))
    if item.get("bot_id") or item.get("subtype"):
        return None  # other bots, joins, edits: not the user's words
    plain = slack_to_plain(text, bot_user_id)
    return Message(role="user", content=plain, author=item_author(item)) if plain else None


def item_author(item: dict[str, Any]) -> Author | None:
    """The author of a conversations.replies item; Slack includes a profile on most."""
    user = str(item.get("user") or "")
    if not user:
        return None
    profile = item.get("user_profile") or {}
    name = str(profile.get("display_name") or profile.get("real_name") or profile.get("name") or "")
    return Author(id=user, name=name)


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
        if history and history[-1].role == message.role and same_author(history[-1], message):
            # A continued answer (or one person's follow-ups) is one message; in a shared
            # thread, different people's messages stay apart so each keeps its author.
            joined = f"{history[-1].content}\n\n{message.content}"
            history[-1] = history[-1].model_copy(update={"content": joined})
        else:
            history.append(message)
    return await name_authors(client, history)
