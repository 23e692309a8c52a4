"""Turning Discord messages into the pieces of a :class:`~shared.contract.Turn`.

Where a conversation lives (guild, parent channel, thread), the question
text without the bot's mention, a thread name, and — when the conversation
store lost a thread's history — the history rebuilt from the thread itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from bots.discord.writer import NOTICE_PREFIXES
from shared.contract import Author, Message, conversation_key, same_author

THREAD_NAME_LIMIT = 100  # Discord's maximum thread name length
HISTORY_LIMIT = 50  # messages read back when rebuilding a lost history


@dataclass(frozen=True)
class Place:
    """Where a conversation lives, as the contract names it (ids as strings)."""

    workspace: str  # guild id; empty in DMs
    channel: str  # a thread's parent channel, or the channel itself
    thread: str = ""

    @property
    def key(self) -> str:
        return conversation_key("discord", self.channel, self.thread)


def place_of(channel: discord.abc.Messageable | discord.abc.GuildChannel) -> Place:
    guild = getattr(channel, "guild", None)
    workspace = str(guild.id) if guild else ""
    if isinstance(channel, discord.Thread):
        return Place(workspace, str(channel.parent_id), str(channel.id))
    return Place(workspace, str(getattr(channel, "id", "")))


def strip_mention(content: str, bot_id: int) -> str:
    """The message text without the bot's own mention(s) (both ``<@id>`` and ``<@!id>``)."""
    return re.sub(rf"<@!?{bot_id}>", " ", content).strip()


def thread_name(question: str) -> str:
    """A thread title from the question: one line, at most 100 characters."""
    line = " ".join(question.split()) or "Question"
    if len(line) <= THREAD_NAME_LIMIT:
        return line
    return line[: THREAD_NAME_LIMIT - 1].rstrip() + "…"


def author_of(user: discord.abc.User) -> Author:
    """Who asked, for a shared thread: the name people see here and the stable user id."""
    return Author(id=str(user.id), name=user.display_name)


def to_history_message(message: discord.Message, bot_id: int) -> Message | None:
    """One platform message as history, or None for what is not part of the conversation."""
    if message.type not in (discord.MessageType.default, discord.MessageType.reply):
        return None
    if message.author.id == bot_id:
        if not message.content or message.content.startswith(NOTICE_PREFIXES):
            return None  # usage hints and error notices are not answers
        return Message(role="assistant", content=message.content)
    if message.author.bot:
        return None
    text = strip_mention(message.content, bot_id)
    return Message(role="user", content=text, author=author_of(message.author)) if text else None


def merge_runs(messages: list[Message]) -> list[Message]:
    """Join consecutive messages of one role: a long answer spans several Discord messages.

    User messages are joined only when one person wrote them: in a shared thread, who
    said what must survive the rebuild.
    """
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1].role == message.role and same_author(merged[-1], message):
            joined = merged[-1].content + "\n\n" + message.content
            merged[-1] = merged[-1].model_copy(update={"content": joined})
        else:
            merged.append(message)
    return merged


async def rebuild_history(
    channel: discord.abc.Messageable,
    before: int,
    bot_id: int,
    after: int | None = None,
) -> list[Message]:
    """The conversation before message ``before``, read from the channel itself.

    ``after`` (a ``/reset``) bounds how far back it reads. A thread started on
    a message begins with that message, which lives in the parent channel.
    """
    found: list[discord.Message] = []
    async for message in channel.history(
        limit=HISTORY_LIMIT,
        before=discord.Object(before),
        after=discord.Object(after) if after else None,
        oldest_first=False,
    ):
        found.append(message)
    found.reverse()
    if isinstance(channel, discord.Thread) and (after is None or channel.id > after):
        starter = await _thread_starter(channel)
        if starter is not None:
            found.insert(0, starter)
    converted = (to_history_message(message, bot_id) for message in found)
    return merge_runs([message for message in converted if message is not None])


async def _thread_starter(thread: discord.Thread) -> discord.Message | None:
    parent = thread.parent
    if not isinstance(parent, discord.TextChannel):
        return None
    try:
        # A thread started on a message has that message's id.
        return await parent.fetch_message(thread.id)
    except discord.HTTPException:
        return None  # a thread started on its own has no starter message
