"""Discord as the answer pipeline sees it: where a conversation lives, how an answer
looks, and the conversation read back from a thread when the store lost it.

A :class:`DiscordSurface` is one answer's place: a channel or thread, replying to
the question's message. Notices start with a marker, so rebuilding history from
a thread can leave them out.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import discord

from bots.answer import Question, Reply, Wording
from bots.attachments import SharedFile
from bots.discord.state import DiscordState
from bots.splitting import split_message
from shared import feedback
from shared.contract import Author, Message, ReplyTarget, conversation_key

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
THREAD_NAME_LIMIT = 100  # Discord's maximum thread name length
THREAD_ARCHIVE_MINUTES: Final = 1440  # one of the durations Discord offers
HISTORY_LIMIT = 50  # messages read back when rebuilding a lost history
ERROR_PREFIX = "⚠️ "
HINT_PREFIX = "💡 "
CANCELLED = "_(cancelled)_"  # a turn whose message was deleted; not an error
VOTE_EMOJI: dict[str, feedback.Vote] = {"👍": "up", "👎": "down"}  # reactions that vote
NOTICE_PREFIXES = (ERROR_PREFIX, HINT_PREFIX, CANCELLED)
Reference = discord.Message | discord.PartialMessage | None  # the message an answer replies to
WORDING = Wording(
    queue_down="The queue is unavailable right now; try again soon.",
    broken="Something went wrong on my side; please try again.",
    reset="/reset",
)


@dataclass(frozen=True)
class Place:
    """Where a conversation lives, as the contract names it (ids as strings)."""

    workspace: str  # guild id; empty in DMs
    channel: str  # a thread's parent channel, or the channel itself
    thread: str = ""

    @property
    def key(self) -> str:
        return conversation_key("discord", self.channel, self.thread)


def place_of(channel: object) -> Place:
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
    """Who wrote a message, for a shared thread: the name people see here and the stable id."""
    return Author(id=str(user.id), name=user.display_name)


def question_in(
    channel: object,  # where the answer goes: anything place_of reads (a user install's DM too)
    text: str,
    user_id: int,
    message_id: int,
    asked_in: int,
    *,
    new_thread: bool = False,
    attachments: Sequence[discord.Attachment] = (),
    author: Author | None = None,
) -> Question:
    """The pipeline's question for a message answered in ``channel``."""
    place = place_of(channel)
    return Question(
        platform="discord",
        workspace=place.workspace,
        channel=place.channel,
        thread=place.thread,
        user=str(user_id),
        message_id=str(message_id),
        text=text,
        asked_in=str(asked_in),
        reply_to=ReplyTarget(
            channel=place.channel, thread=place.thread, message_id=str(message_id)
        ),
        files=[_shared_file(a) for a in attachments],
        earlier=not new_thread,
        author=author,
    )


class DiscordSurface:
    """One answer in a Discord channel or thread; see :class:`bots.answer.Surface`."""

    wording = WORDING
    early_placeholder = False  # the placeholder shows the place in line from the start

    def __init__(
        self,
        channel: discord.abc.Messageable,
        state: DiscordState,
        bot_id: int,
        before: int,
        reference: Reference = None,
        *,
        interval: float = 1.0,
        limit: int = MESSAGE_LIMIT,
    ) -> None:
        self.channel = channel
        self.state = state
        self.bot_id = bot_id
        self.before = before  # the question's message: history ends before it
        self.reference = reference
        self.interval = interval
        self.limit = limit

    def render(self, reply: Reply) -> list[str]:
        text = reply.text
        if reply.cancelled:  # the asker deleted the question: a short note, not an error
            text = f"{text.rstrip()}\n\n{CANCELLED}" if text.strip() else CANCELLED
        pieces = [] if not text.strip() else [text]
        if len(text) > self.limit:
            pieces = split_message(text, self.limit)
        problem = _problem(reply)
        if problem:  # in place of the placeholder, or after a partial answer
            return [*pieces, ERROR_PREFIX + problem]
        if pieces and reply.phase == "retrying":  # the answer so far stays: say why it stalls
            status = f"_{_status(reply)}_"
            if len(pieces[-1]) + len(status) + 2 <= self.limit:
                return [*pieces[:-1], f"{pieces[-1]}\n\n{status}"]
            return [*pieces, status]
        return pieces or [_status(reply)]

    async def post(self, text: str, first: bool) -> discord.Message:
        return await self.channel.send(
            text,
            reference=self.reference if first else None,  # type: ignore[arg-type]
            mention_author=False,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    async def edit(self, posted: discord.Message, text: str) -> discord.Message:
        return await posted.edit(content=text)

    async def delete(self, posted: discord.Message) -> None:
        await posted.delete()

    async def notice(self, text: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            await self.channel.send(HINT_PREFIX + text)

    def busy(self) -> AbstractAsyncContextManager[object]:
        return self.channel.typing()

    async def finished(self, job_id: str, shown: Sequence[tuple[Any, str]]) -> None:
        """React 👍 and 👎 on the answer's last message, so a vote is one click
        (bots/discord/feedback.py records it); remember which turn it answers."""
        if not shown:
            return
        last: discord.Message = shown[-1][0]
        try:
            await feedback.remember_answer(self.state.redis, "discord", str(last.id), job_id)
            for emoji in VOTE_EMOJI:
                await last.add_reaction(emoji)
        except discord.HTTPException as exc:  # the answer stands without the prompts
            log.info("could not add feedback reactions: %s", type(exc).__name__)
        except Exception:
            log.warning("could not offer feedback on job %s", job_id, exc_info=True)

    async def history(self) -> list[Message]:
        """The conversation before the question, read from the channel itself.

        A ``/reset`` bounds how far back it reads. A thread started on a message
        begins with that message, which lives in the parent channel.
        """
        after = await self.state.reset_point(place_of(self.channel).key)
        found: list[discord.Message] = []
        async for message in self.channel.history(
            limit=HISTORY_LIMIT,
            before=discord.Object(self.before),
            after=discord.Object(after) if after else None,
            oldest_first=False,
        ):
            found.append(message)
        found.reverse()
        channel = self.channel
        if isinstance(channel, discord.Thread) and (after is None or channel.id > after):
            starter = await _thread_starter(channel)
            if starter is not None:
                found.insert(0, starter)
        converted = (self._as_history(message) for message in found)
        return [message for message in converted if message is not None]

    def _as_history(self, message: discord.Message) -> Message | None:
        """One platform message as history, or None for what is not part of the conversation."""
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return None
        if message.author.id == self.bot_id:
            if not message.content or message.content.startswith(NOTICE_PREFIXES):
                return None  # usage hints and error notices are not answers
            return Message(role="assistant", content=message.content)
        if message.author.bot:
            return None
        text = strip_mention(message.content, self.bot_id)
        if not text:
            return None
        return Message(role="user", content=text, author=author_of(message.author))


def _status(reply: Reply) -> str:
    """The placeholder's text while there is no answer text."""
    if reply.phase == "retrying":
        return f"{reply.problem or 'The model hit a problem'} Retrying…"
    if reply.phase == "waiting" and reply.ahead > 0:
        noun = "question" if reply.ahead == 1 else "questions"
        return f"⏳ Waiting in line: {reply.ahead} {noun} ahead of yours…"
    if reply.phase == "waiting":
        return "⏳ Waiting for the model…"
    return "Thinking…"


def _problem(reply: Reply) -> str:
    if reply.phase == "failed":
        return reply.problem or "The model could not answer."
    if reply.phase == "lost":
        return "No answer in time: the model seems to be down. Try again later."
    if reply.empty:
        return "The model returned an empty answer."
    return ""


async def _thread_starter(thread: discord.Thread) -> discord.Message | None:
    parent = thread.parent
    if not isinstance(parent, discord.TextChannel):
        return None
    try:
        # A thread started on a message has that message's id.
        return await parent.fetch_message(thread.id)
    except discord.HTTPException:
        return None  # a thread started on its own has no starter message


def _shared_file(attached: discord.Attachment) -> SharedFile:
    async def fetch(_most: int) -> bytes | None:
        # Only called when the declared size is within the limit; Discord's sizes are exact.
        try:
            return await attached.read()
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not download attachment %s: %s", attached.filename, exc)
            return None

    return SharedFile(attached.filename, attached.size, attached.content_type or "", fetch)
