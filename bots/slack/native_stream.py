"""Shows one answer with Slack's native streaming, falling back to edits.

``chat.startStream`` opens one message that ``chat.appendStream`` grows and
``chat.stopStream`` finalizes; Slack renders the Markdown itself and shows the
message as "being written" meanwhile. This is far cheaper than rewriting the
message with ``chat.update`` (a Tier 3 method shared by every answer in the
workspace) and reads like Slack's own AI answers.

:class:`NativeReply` is a :class:`bots.answer.View`: the pipeline drives it as
it drives a :class:`~bots.answer.PacedReply`, and it keeps the same
:class:`~bots.answer.Reply` in step. Where streaming cannot do the job it hands
the answer over to a PacedReply on the :class:`~bots.slack.surface.SlackSurface`
(``chat.update``), on the same message when one exists:

* the workspace (or the place) refuses ``chat.startStream``: the whole answer
  goes the ``chat.update`` way;
* the worker retries the job after text reached Slack (the retry may take it
  back, or the final text differs from the streamed one): streamed text cannot
  be taken back, so the stream is stopped and that one message is edited (it
  says why it waits, then carries on or is rewritten);
* the stream breaks midway (it expired on Slack's side).

Rate limits: appends are batched to one call per ``interval`` and a 429 is
waited out for as long as ``Retry-After`` says (the client's retry handler
first, then :func:`~bots.slack.surface.patiently`), so no text is lost and no
second message appears.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_chat_stream import AsyncChatStream

from bots.answer import PacedReply, Reply
from bots.slack.mrkdwn import defang, to_mrkdwn
from bots.slack.surface import (
    CANCELLED,
    EMPTY_ANSWER,
    SlackSurface,
    note_line,
    patiently,
    status_line,
)
from shared.contract import StreamEvent

log = logging.getLogger(__name__)

StatusSink = Callable[[str], Awaitable[None]]


class StreamRefused(Exception):
    """Slack would not open a stream here; the answer goes the chat.update way."""


class NativeReply:
    """One answer streamed natively into ``surface``'s thread; see the module docstring."""

    def __init__(
        self,
        surface: SlackSurface,
        *,
        recipient_user: str = "",
        recipient_team: str = "",
        interval: float = 0.5,
        on_status: StatusSink | None = None,
        final_blocks: Callable[[str], list[dict[str, Any]]] | None = None,
    ) -> None:
        """``on_status`` shows the waiting line elsewhere (the assistant pane's status);
        ``final_blocks(job_id)`` gives blocks for under the finished answer (feedback)."""
        assert surface.thread_ts, "a stream is always a reply in a thread"
        self.surface = surface
        self.reply = Reply()
        self.recipient = {"recipient_user_id": recipient_user, "recipient_team_id": recipient_team}
        self.interval = interval
        self.on_status = on_status
        self.final_blocks = final_blocks
        self.fallback: PacedReply | None = None
        self.ts = ""  # the one message of this answer, once it exists
        self._stream: AsyncChatStream | None = None
        self._stopped = False
        self._started = False
        self._shown = ""  # the Markdown Slack has received so far
        self._last_append = 0.0
        self._status = ""  # the last waiting line shown
        self._status_tasks: set[asyncio.Task[None]] = set()

    # -- the View the pipeline drives ----------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @property
    def posted(self) -> list[tuple[Any, str]]:
        """Messages still to be given feedback buttons: only an edited fallback's (a
        natively finished answer got them from ``chat.stopStream``)."""
        return self.fallback.posted if self.fallback is not None else []

    async def start(self) -> None:
        """Nothing is posted yet (a stream starts with its first text); the waiting line
        shows where the surface has a place for it."""
        self._started = True
        self._show_status()

    def changed(self) -> None:
        if self.fallback is not None:
            self.fallback.changed()
        else:
            self._show_status()

    async def follow(self, events: AsyncIterator[StreamEvent]) -> Reply:
        """Show a job's events until its final one (or silence), then the final state."""
        job_id = ""
        async for event in events:
            job_id = event.job_id
            self.reply.apply(event)
            if self.reply.final:
                break
            if self.fallback is not None:
                self.fallback.changed()
            else:
                await self._guarded(self._keep_up())
        if not self.reply.final:
            self.reply.lose()
        if self.fallback is None:
            await self._guarded(self._end(job_id))
        if self.fallback is not None:
            await self.fallback.close()
        return self.reply

    async def fail(self, problem: str) -> None:
        if self.fallback is not None:
            await self.fallback.fail(problem)
            return
        self.reply.fail(problem)
        await self._guarded(self._end(""))
        if self.fallback is not None:
            await self.fallback.close()

    def abandon(self) -> None:
        for task in list(self._status_tasks):
            task.cancel()
        if self.fallback is not None:
            self.fallback.abandon()

    # -- streaming -----------------------------------------------------------------

    async def _guarded(self, step: Awaitable[None]) -> None:
        """Run one streaming step; where streaming fails, the edits take over."""
        try:
            await step
        except StreamRefused:
            await self._hand_over()
        except SlackApiError as exc:
            # The stream broke after it started (e.g. it expired on Slack's side): its
            # message stays, and the edits take over with the whole text.
            log.warning("slack: native stream failed: %s", exc.response.get("error"))
            self._stopped = True
            await self._hand_over()

    async def _keep_up(self) -> None:
        """Send what is new, at most once per interval; hand over if text was taken back."""
        text = self.reply.text
        if not text.startswith(self._shown):
            await self._hand_over()  # a retry took back text that already left
            return
        if self.reply.phase == "retrying" and self._shown:
            # A stream cannot say why it stalls, and the retry may take its text back:
            # edits take over (the same message), and carry on if the retry resumes.
            await self._hand_over()
            return
        self._show_status()
        now = asyncio.get_running_loop().time()
        if len(text) > len(self._shown) and now - self._last_append >= self.interval:
            await self._send(text[len(self._shown) :], stop=False)
            self._last_append = asyncio.get_running_loop().time()

    async def _end(self, job_id: str) -> None:
        """The final state, in the one streamed message where it can be."""
        reply = self.reply
        text = reply.text
        if not text.startswith(self._shown):
            await self._hand_over()  # the final text differs (a lost delta, moderation)
            return
        rest = text[len(self._shown) :]
        if reply.phase == "done":
            if reply.cancelled:
                rest = f"{rest.rstrip()}\n\n{CANCELLED}" if text.strip() else CANCELLED
            elif reply.empty:
                rest = EMPTY_ANSWER
            finished = not (reply.cancelled or reply.empty) and self.final_blocks and job_id
            blocks = self.final_blocks(job_id) if finished and self.final_blocks else None
            await self._send(rest, stop=True, blocks=blocks)
        elif self.ts:  # failed or lost after text: one warning line ends the stream
            note = f":warning: {note_line(reply)}"
            await self._send(f"{rest}\n\n{note}" if text else note, stop=True)
        else:  # nothing streamed: one message with the note, the usual way
            await self._hand_over()

    async def _open(self) -> AsyncChatStream:
        if self._stream is None:
            surface = self.surface
            extra = {name: value for name, value in self.recipient.items() if value}
            # buffer_size=1: every append we make is sent; we batch by time ourselves.
            self._stream = await surface.client.chat_stream(
                channel=surface.channel, thread_ts=surface.thread_ts or "", buffer_size=1, **extra
            )
        return self._stream

    async def _send(
        self, markdown: str, *, stop: bool, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        """Append ``markdown`` (or stop the stream with it); refused at the start: raise
        :class:`StreamRefused`."""
        stream = await self._open()
        first = stream.ts is None
        once = iter([defang(markdown)])  # the helper keeps unsent text: a retry adds none

        async def call() -> Any:
            if stop:
                return await stream.stop(markdown_text=next(once, "") or None, blocks=blocks)
            return await stream.append(markdown_text=next(once, ""))

        try:
            await patiently(call, "chat.stopStream" if stop else "chat.appendStream")
        except SlackApiError as exc:
            if first:  # startStream refused: this workspace or place cannot stream
                log.info("slack: native streaming refused (%s)", exc.response.get("error"))
                raise StreamRefused from None
            raise
        self.ts = str(stream.ts or "")
        self._stopped = stop
        self._shown += markdown

    async def _hand_over(self) -> None:
        """Continue with chat.update edits: on this answer's message when it exists."""
        if self.ts and not self._stopped:
            try:
                await self._send("", stop=True)
            except SlackApiError as exc:  # already over on Slack's side: edit it as it is
                log.info("slack: could not stop the stream: %s", exc.response.get("error"))
                self._stopped = True
        fallback = PacedReply(self.surface, self.reply)
        if self.ts:
            fallback.posted.append((self.ts, to_mrkdwn(self._shown)))
        self.fallback = fallback
        await fallback.start()

    def _show_status(self) -> None:
        """The waiting line (queue place, retry reason) while no text shows."""
        if self.on_status is None or self._shown or self.reply.text or self.reply.final:
            return
        line = status_line(self.reply).strip("_ ")
        if line == self._status:
            return
        self._status = line
        task = asyncio.create_task(self._post_status(self.on_status, line))
        self._status_tasks.add(task)
        task.add_done_callback(self._status_tasks.discard)

    @staticmethod
    async def _post_status(sink: StatusSink, line: str) -> None:
        try:
            await sink(line)
        except SlackApiError as exc:  # only the waiting line depends on it
            log.info("slack: could not set the status: %s", exc.response.get("error"))
