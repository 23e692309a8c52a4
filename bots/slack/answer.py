"""From one Slack message to one streamed answer: history, turn, queue, writer.

Whatever goes wrong here ends as one short line in the thread. Once the turn
is enqueued the job is the worker's: a Slack failure while streaming does not
cancel it, so its answer still lands in the conversation history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.attachments import ReadAttachments, SharedFile, read_attachments, with_attachments
from bots.client import TurnClient
from bots.slack.assistant import assistant_pane, pane_system_prompt  # issue 17 hook
from bots.slack.feedback import stream_with_feedback  # issue 17 hook
from bots.slack.history import rebuild_history
from bots.slack.native_stream import NativeStreamWriter, native_or_edits  # issue 17 hook
from bots.slack.people import slack_author  # issue 17 hook: shared threads name the asker
from bots.slack.settings import SlackSettings
from bots.slack.state import SlackState
from bots.slack.writer import SlackStreamWriter
from bots.team import TeamControls, trimmed_notice
from shared.contract import ReplyTarget, Turn, conversation_key
from shared.settings import Settings
from shared.turnqueue import QueueFull

log = logging.getLogger(__name__)

QUEUE_ERROR = "Sorry, I couldn't queue your question right now. Please try again in a minute."
STREAM_ERROR = "Sorry, something went wrong while posting the answer."


@dataclass(frozen=True)
class Incoming:
    """A Slack message we decided to answer."""

    team: str
    channel: str
    user: str
    ts: str  # the message being answered
    text: str  # already cleaned for the model
    thread_ts: str  # names the conversation; "" for a DM's top level
    reply_in_thread: bool = True
    files: tuple[dict[str, Any], ...] = field(default=())  # the event's `files`

    @property
    def conversation(self) -> str:
        return conversation_key("slack", self.channel, self.thread_ts)


@dataclass(frozen=True)
class BotIdentity:
    user_id: str  # <@U…> as mentioned
    bot_id: str  # B… on the bot's own messages


class Answerer:
    def __init__(
        self,
        settings: Settings,
        slack: SlackSettings,
        turns: TurnClient,
        state: SlackState,
        team: TeamControls | None = None,
    ) -> None:
        self.settings = settings
        self.slack = slack
        self.turns = turns
        self.state = state
        self.team = team or TeamControls("slack", turns.aredis, lambda config: config)

    async def answer(self, client: AsyncWebClient, msg: Incoming, bot: BotIdentity) -> None:
        reply_thread = msg.thread_ts if msg.reply_in_thread else None
        # issue 17 hook: the assistant pane (status, title) and native streaming
        pane = await assistant_pane(client, self.turns.aredis, msg.channel, reply_thread, msg.text)
        writer = native_or_edits(
            client,
            msg.channel,
            reply_thread,
            mode=self.slack.native_streaming,
            user=msg.user,
            team=msg.team,
            interval=self.slack.stream_interval,
            edit_interval=self.slack.update_interval,
            limit=self.slack.max_message_chars,
            on_status=pane.set_status if pane else None,
        )
        try:
            await writer.start()
        except SlackApiError as exc:
            # Nowhere to write (not in channel, archived…): enqueueing would waste a turn.
            log.warning("slack: cannot post in %s: %s", msg.channel, exc.response.get("error"))
            return
        try:
            turn, read = await self._turn(client, msg, bot)
            job_id = await self.turns.submit(turn)
        except QueueFull as exc:  # overloaded or rate-limited: one polite line, at once
            await self._fail(writer, exc.user_message)
            return
        except Exception:  # any queue failure becomes one line in the thread
            log.exception("slack: could not enqueue a turn for %s", msg.channel)
            await self._fail(writer, QUEUE_ERROR)
            return
        try:
            # Deleting the question (or `/ask cancel`) cancels the turn.
            await self.turns.remember("slack", msg.channel, msg.ts, job_id, msg.user)
        except Exception:  # only cancelling depends on it; the answer still comes
            log.warning("slack: could not index job %s for cancellation", job_id, exc_info=True)
        if read.hint():  # images left out: say so at once, not after the answer
            try:
                await client.chat_postMessage(
                    channel=msg.channel, thread_ts=reply_thread, text=f":bulb: _{read.hint()}_"
                )
            except SlackApiError as exc:
                log.warning("slack: could not post the image note: %s", exc.response.get("error"))
        try:
            if msg.thread_ts:
                await self.state.join_thread(msg.channel, msg.thread_ts)
            ahead = (await self.turns.position(job_id)).ahead
            if ahead:
                writer.set_status(f"_thinking… ({ahead} ahead of you in the queue)_")
            # Silence longer than a turn can wait plus run means the job is gone.
            silence = float(self.settings.job_ttl + self.settings.job_timeout)
            # issue 17 hook: 👍/👎 buttons under the finished answer
            events = self.turns.events(job_id, timeout=silence)
            final = await stream_with_feedback(client, writer, events, job_id)
            if final is not None and final.kind == "done" and final.usage is not None:
                await self.team.record_usage(msg.user, msg.channel, turn.model or "", final.usage)
                if final.usage.history_dropped > 0:
                    notice = trimmed_notice(final.usage.history_dropped, "`@corral reset`")
                    await client.chat_postMessage(
                        channel=msg.channel, thread_ts=reply_thread, text=f":bulb: _{notice}_"
                    )
        except Exception:  # the job keeps running; tell the user, log the rest
            log.exception("slack: streaming job %s failed", job_id)
            await self._fail(writer, STREAM_ERROR)

    async def _turn(
        self, client: AsyncWebClient, msg: Incoming, bot: BotIdentity
    ) -> tuple[Turn, ReadAttachments]:
        history = None
        in_thread = msg.thread_ts and msg.thread_ts != msg.ts
        if in_thread and not await self.turns.has_history(msg.conversation):
            try:
                history = await rebuild_history(
                    client,
                    msg.channel,
                    msg.thread_ts,
                    msg.ts,
                    bot.user_id,
                    bot.bot_id,
                    self.slack.history_limit,
                )
            except SlackApiError as exc:
                # Answering without context beats not answering.
                log.warning("slack: history rebuild failed: %s", exc.response.get("error"))
        effective = await self.team.effective(msg.channel)
        files = [_shared_file(client, item) for item in msg.files]
        limits = self.team.config.limits
        read = await read_attachments(files, limits, self.turns.aredis, self.settings.history_ttl)
        turn = Turn(
            platform="slack",
            workspace=msg.team,
            channel=msg.channel,
            thread=msg.thread_ts,
            user=msg.user,
            message_id=msg.ts,
            text=with_attachments(msg.text, read.blocks),
            attachments=read.attachments,
            reply_to=ReplyTarget(
                channel=msg.channel, thread=msg.thread_ts if msg.reply_in_thread else ""
            ),
            # issue 17 hook: in the assistant pane, the channel the user is looking at
            system_prompt=await pane_system_prompt(
                client,
                self.turns.aredis,
                msg.channel,
                msg.thread_ts,
                effective.system_prompt,
                self.settings.system_prompt,
            ),
            model=self.team.queue_model(effective.model),
            history=history or None,
            author=await slack_author(client, msg.user),  # issue 17 hook
        )
        return turn, read

    @staticmethod
    async def _fail(writer: SlackStreamWriter | NativeStreamWriter, message: str) -> None:
        try:
            await writer.fail(message)
        except SlackApiError as exc:
            log.warning("slack: could not post the error note: %s", exc.response.get("error"))


def _shared_file(client: AsyncWebClient, item: dict[str, Any]) -> SharedFile:
    """One file of a Slack event; downloading it needs the bot token."""
    name = str(item.get("name") or item.get("title") or "file")
    url = item.get("url_private_download") or item.get("url_private")

    async def fetch(most: int) -> bytes | None:
        if not url:
            return None
        headers = {"Authorization": f"Bearer {client.token}"}
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(url, headers=headers) as resp:
                    resp.raise_for_status()
                    data = bytearray()  # read() returns what arrived so far: loop up to `most`
                    while len(data) < most:
                        chunk = await resp.content.read(most - len(data))
                        if not chunk:
                            break
                        data += chunk
                    return bytes(data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception names the URL and status, never the request headers (the token).
            log.warning("slack: could not download file %s: %s", name, exc)
            return None

    size = int(item.get("size") or 0)
    return SharedFile(name, size, str(item.get("mimetype") or ""), fetch)
