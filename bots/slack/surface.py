"""Slack as the answer pipeline sees it: an answer in a thread, Slack text for the
model, and a thread's history read back from Slack when the store lost it.

An answer is a list of chunks (one Slack message each), so a long one continues
in the thread instead of being truncated. The worker's conversation store is
the source of truth; Slack is asked only when the store has nothing for a thread
that clearly has earlier messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.answer import Question, Reply, Wording
from bots.attachments import SharedFile, url_file
from bots.slack.mrkdwn import escape, slack_to_plain, to_mrkdwn
from bots.slack.people import name_authors
from bots.splitting import split_message
from shared.contract import Author, Message, ReplyTarget

log = logging.getLogger(__name__)

THINKING = "_thinking…_"
NO_ANSWER = "No answer arrived in time; the worker may be down or very busy. Please try again."
EMPTY_ANSWER = "_(the model returned an empty answer)_"
CANCELLED = "_(cancelled)_"  # the asker deleted the question or ran `/ask cancel`
MAX_RATE_LIMIT_WAITS = 5  # after the client's own retry handler has given up once
WORDING = Wording(
    queue_down="Sorry, I couldn't queue your question right now. Please try again in a minute.",
    broken="Sorry, something went wrong while posting the answer.",
    reset="`@corral reset`",
)
FEEDBACK = "corral_feedback"  # the buttons' block id, and their action ids' prefix
SECTION_LIMIT = 3000  # Slack's limit on a section block's text
ASK_EVENT = "corral_ask"  # metadata on the /ask echo, so a rebuild knows it is a user turn
_ASKER = re.compile(r"^<@([A-Z0-9]+)(?:\|[^>]*)?> asked:")  # the /ask echo names its asker
_NOT_ANSWERS = (":warning:", ":bulb:", THINKING, EMPTY_ANSWER, NO_ANSWER)


@dataclass(frozen=True)
class BotIdentity:
    user_id: str  # <@U…> as mentioned
    bot_id: str  # B… on the bot's own messages


def bot_identity(context: AsyncBoltContext) -> BotIdentity:
    return BotIdentity(user_id=context.bot_user_id or "", bot_id=context.bot_id or "")


@dataclass(frozen=True)
class Incoming:
    """A Slack message the bot decided to answer."""

    workspace: str
    channel: str
    user: str
    ts: str  # the message being answered
    text: str  # already cleaned for the model
    thread_ts: str  # names the conversation; "" for a DM's top level
    reply_in_thread: bool = True
    files: Sequence[dict[str, Any]] = ()  # the event's `files`


def question_of(
    client: AsyncWebClient, msg: Incoming, author: Author | None = None, context: str = ""
) -> Question:
    """The pipeline's question for ``msg``; its files download with the bot token."""
    return Question(
        platform="slack",
        workspace=msg.workspace,
        channel=msg.channel,
        thread=msg.thread_ts,
        user=msg.user,
        message_id=msg.ts,
        text=msg.text,
        asked_in=msg.channel,
        reply_to=ReplyTarget(
            channel=msg.channel, thread=msg.thread_ts if msg.reply_in_thread else ""
        ),
        files=[_shared_file(client, item) for item in msg.files],
        earlier=bool(msg.thread_ts) and msg.thread_ts != msg.ts,
        author=author,
        context=context,
    )


class SlackSurface:
    """One answer in a Slack channel or thread; see :class:`bots.answer.Surface`."""

    wording = WORDING
    early_placeholder = True  # a channel we cannot post in must not cost a turn

    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        thread_ts: str | None,
        *,
        interval: float = 1.0,
        limit: int = 3500,
        split: Callable[[str, int], list[str]] = split_message,
        bot: BotIdentity | None = None,
        asked_ts: str = "",
        history_limit: int = 50,
    ) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts or None
        self.interval = interval
        self.limit = limit
        self.split = split
        self.bot = bot or BotIdentity("", "")
        self.asked_ts = asked_ts  # the question: history ends before it
        self.history_limit = history_limit

    def render(self, reply: Reply) -> list[str]:
        answered = bool(reply.text.strip())
        text = to_mrkdwn(reply.text) if answered else status_line(reply)
        if reply.cancelled and answered:
            text = f"{text}\n\n{CANCELLED}"
        chunks = self.split(text, self.limit) if len(text) > self.limit else [text]
        note = note_line(reply)
        if note:
            note = f":warning: {escape(note)}"
            if answered and len(chunks[-1]) + len(note) + 2 <= self.limit:
                chunks[-1] = f"{chunks[-1]}\n\n{note}"
            elif answered:
                chunks.append(note)
            else:
                chunks = [note]
        return chunks

    async def post(self, text: str, first: bool) -> str:
        reply = await self._call(
            "chat_postMessage",
            channel=self.channel,
            text=text,
            thread_ts=self.thread_ts,
            unfurl_links=False,
        )
        return str(reply["ts"])

    async def edit(self, posted: str, text: str) -> str:
        await self._call("chat_update", channel=self.channel, ts=posted, text=text)
        return posted

    async def delete(self, posted: str) -> None:
        await self._call("chat_delete", channel=self.channel, ts=posted)

    async def notice(self, text: str) -> None:
        try:
            await self.client.chat_postMessage(
                channel=self.channel, thread_ts=self.thread_ts, text=f":bulb: _{text}_"
            )
        except SlackApiError as exc:
            log.warning("slack: could not post a note: %s", exc.response.get("error"))

    def busy(self) -> AbstractAsyncContextManager[object]:
        return contextlib.nullcontext()

    async def finished(self, job_id: str, shown: Sequence[tuple[Any, str]]) -> None:
        """👍/👎 buttons under the answer: one more update of its last message (its text
        as section blocks, then the buttons; bots/slack/feedback.py records clicks)."""
        if not shown:
            return
        ts, text = shown[-1]
        sections = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text[i : i + SECTION_LIMIT]}}
            for i in range(0, len(text), SECTION_LIMIT)
        ]
        try:  # notifications and old clients still read the text
            blocks = [*sections, *feedback_blocks(job_id)]
            await self._call("chat_update", channel=self.channel, ts=ts, text=text, blocks=blocks)
        except SlackApiError as exc:  # the answer stands without buttons
            log.warning("slack: could not add feedback buttons: %s", exc.response.get("error"))

    async def history(self) -> list[Message]:
        """The thread's messages before the question, oldest first."""
        if not self.thread_ts:
            return []
        try:
            reply = await self.client.conversations_replies(
                channel=self.channel,
                ts=self.thread_ts,
                limit=min(self.history_limit + 1, 1000),
                include_all_metadata=True,
            )
        except SlackApiError as exc:  # answering without context beats not answering
            log.warning("slack: history rebuild failed: %s", exc.response.get("error"))
            return []
        before = float(self.asked_ts or "inf")
        items = [m for m in reply.get("messages") or [] if float(m.get("ts", 0)) < before]
        bot = self.bot
        found = (to_message(i, bot.user_id, bot.bot_id) for i in items[-self.history_limit :])
        return await name_authors(self.client, [m for m in found if m is not None])

    async def _call(self, method: str, **kwargs: object) -> dict[str, Any]:
        response = await patiently(lambda: getattr(self.client, method)(**kwargs), method)
        return response.data if isinstance(response.data, dict) else {}


async def patiently(call: Callable[[], Awaitable[Any]], what: str) -> Any:
    """``call()``: one Web API call, waiting out 429s (Retry-After) the client's own
    handler did not absorb."""
    for attempt in range(MAX_RATE_LIMIT_WAITS + 1):
        try:
            return await call()
        except SlackApiError as exc:
            if exc.response.status_code != 429 or attempt == MAX_RATE_LIMIT_WAITS:
                raise
            delay = _retry_after(exc.response.headers)
            log.info("slack rate limit on %s, waiting %.0fs", what, delay)
            await asyncio.sleep(min(delay, 60.0))
    raise AssertionError("unreachable")


def feedback_blocks(job_id: str) -> list[dict[str, Any]]:
    """The buttons under a finished answer; their value names the turn they judge."""

    def button(vote: str, emoji: str, label: str) -> dict[str, Any]:
        text = {"type": "plain_text", "text": f"{emoji} {label}", "emoji": True}
        return {"type": "button", "action_id": f"{FEEDBACK}_{vote}", "text": text, "value": job_id}

    buttons = [button("up", "👍", "Helpful"), button("down", "👎", "Not helpful")]
    return [{"type": "actions", "block_id": FEEDBACK, "elements": buttons}]


def status_line(reply: Reply) -> str:
    """The placeholder's text while there is no answer text."""
    if reply.phase == "retrying":  # the job runs again from scratch: say why we wait
        return f"_{escape(reply.problem or 'hit a snag')}, retrying…_"
    if reply.phase == "waiting" and reply.ahead:
        return f"_thinking… ({reply.ahead} ahead of you in the queue)_"
    if reply.phase == "done":
        return CANCELLED if reply.cancelled else EMPTY_ANSWER
    return THINKING


def note_line(reply: Reply) -> str:
    """An error line under whatever text arrived."""
    if reply.phase == "retrying" and reply.text.strip():  # it stays until the retry starts
        return f"{reply.problem or 'hit a snag'}, retrying…"
    if reply.phase == "failed":
        return reply.problem or "Something went wrong while answering."
    if reply.phase == "lost":
        return NO_ANSWER
    return ""


def _retry_after(headers: dict[str, Any]) -> float:
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            with contextlib.suppress(TypeError, ValueError):
                return max(float(value[0] if isinstance(value, list) else value), 0.0)
    return 1.0


# Slack messages as history


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
        if not text or text.startswith(_NOT_ANSWERS):
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
    name = profile.get("display_name") or profile.get("real_name") or profile.get("name")
    return Author(id=user, name=str(name or ""))


def _shared_file(client: AsyncWebClient, item: dict[str, Any]) -> SharedFile:
    name = str(item.get("name") or item.get("title") or "file")
    url = item.get("url_private_download") or item.get("url_private")
    size, kind = int(item.get("size") or 0), str(item.get("mimetype") or "")
    return url_file(name, size, kind, url, {"Authorization": f"Bearer {client.token}"})
