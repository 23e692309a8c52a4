"""Streams one answer with Slack's native streaming methods, falling back to edits.

``chat.startStream`` opens one message that ``chat.appendStream`` grows and
``chat.stopStream`` finalizes; Slack renders the Markdown itself and shows
the message as "being written" meanwhile. This is far cheaper than rewriting
the message with ``chat.update`` (a Tier 3 method shared by every answer in
the workspace) and reads like Slack's own AI answers.

:class:`NativeStreamWriter` has the interface of
:class:`~bots.slack.writer.SlackStreamWriter` (``start`` / ``set_status`` /
``stream`` / ``fail``), so the answer pipeline can pick either. It hands the
answer over to a ``SlackStreamWriter`` — on the same message when one exists
— where streaming cannot do the job:

* the workspace (or the place) refuses ``chat.startStream``: the whole answer
  goes the ``chat.update`` way;
* the worker retries the job: streamed text cannot be taken back, so the
  stream is stopped and the retried answer rewrites that one message.

Rate limits: appends are batched to one call per ``interval`` and a 429 is
waited out for as long as ``Retry-After`` says (the client's retry handler
first, then here), so no text is lost and no second message appears.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.mrkdwn import defang, to_mrkdwn
from bots.slack.writer import (
    CANCELLED,
    EMPTY_ANSWER,
    NO_ANSWER,
    THINKING,
    SlackStreamWriter,
    _Posted,
)
from shared.contract import StreamEvent

log = logging.getLogger(__name__)

RATE_LIMIT_WAITS = 5  # 429s waited out per call, after the client's own handler
MAX_WAIT_S = 60.0
StatusSink = Callable[[str], Awaitable[None]]


class StreamRefused(Exception):
    """Slack would not open a stream here; the answer goes the chat.update way."""


async def _retrying(call: Callable[[], Awaitable[Any]], what: str) -> Any:
    """``call()``, waiting out rate limits for as long as Slack's Retry-After asks."""
    waits = 0
    while True:
        try:
            return await call()
        except SlackApiError as exc:
            if exc.response.status_code != 429 or waits >= RATE_LIMIT_WAITS:
                raise
            waits += 1
            headers = {k.lower(): v for k, v in (exc.response.headers or {}).items()}
            raw = headers.get("retry-after", "1")
            try:
                delay = float(raw[0] if isinstance(raw, list) else raw)
            except (TypeError, ValueError):
                delay = 1.0
            log.info("slack rate limit on %s: waiting %.1fs", what, delay)
            await asyncio.sleep(min(max(delay, 0.0), MAX_WAIT_S))


async def _replay(
    first: Iterable[StreamEvent], rest: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    for event in first:
        yield event
    async for event in rest:
        yield event


class NativeStreamWriter:
    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        thread_ts: str,
        *,
        recipient_user_id: str = "",
        recipient_team_id: str = "",
        interval: float = 0.5,
        edit_interval: float = 1.0,
        limit: int = 3500,
        on_status: StatusSink | None = None,
        final_blocks: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        """``on_status`` shows a waiting line elsewhere (the assistant pane's status);
        ``final_blocks`` gives blocks to put under the finished answer (feedback)."""
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.recipient_user_id = recipient_user_id
        self.recipient_team_id = recipient_team_id
        self.interval = interval
        self.edit_interval = edit_interval
        self.limit = limit
        self.on_status = on_status
        self.final_blocks = final_blocks
        self.fallback: SlackStreamWriter | None = None
        self.ts = ""  # the one message of this answer, once it exists
        self._stream: AsyncChatStream | None = None
        self._stopped = False
        self._shown = ""  # the Markdown Slack has received so far
        self._pending = ""  # text not yet sent (batched until the next append)
        self._last_append = 0.0
        self._status_tasks: set[asyncio.Task[None]] = set()

    # -- the writer interface ------------------------------------------------------

    async def start(self, status: str = THINKING) -> str:
        """Nothing is posted yet (a stream starts with its first text); the status shows
        where the surface has a place for it. Returns the message ts ("" until then)."""
        self.set_status(status)
        return self.ts

    def set_status(self, status: str) -> None:
        if self.fallback is not None:
            self.fallback.set_status(status)
        elif self.on_status is not None and not self._shown:
            task = asyncio.create_task(self._show_status(status))
            self._status_tasks.add(task)
            task.add_done_callback(self._status_tasks.discard)

    async def stream(self, events: AsyncIterator[StreamEvent]) -> StreamEvent | None:
        """Follow a job's events to the end; returns its final event (None if it went silent)."""
        seen: list[StreamEvent] = []  # replayed to the fallback if the stream is refused
        async for event in events:
            seen.append(event)
            retry = event.kind == "started" or (event.kind == "error" and event.retrying)
            if retry and not self.ts:
                # Nothing reached Slack yet: the retried attempt simply starts over.
                self._pending = ""
                if event.kind == "error":
                    self.set_status(f"{event.error or 'hit a snag'}, retrying…")
                continue
            try:
                if event.kind == "delta":
                    self._pending += event.text
                    if asyncio.get_running_loop().time() - self._last_append >= self.interval:
                        await self._append()
                    continue
                if event.kind == "done":
                    await self._finish(event)
                    return event
            except StreamRefused:
                return await self._hand_over(_replay(seen, events), keep=False)
            except SlackApiError as exc:
                # The stream broke after it started (e.g. it expired on Slack's side): its
                # message stays, and the edits take over with the whole text.
                log.warning("slack: native stream failed: %s", exc.response.get("error"))
                self._stopped = True
                return await self._hand_over(_replay(seen, events), keep=True)
            if retry:
                # A retried attempt: its text replaces the streamed one, in the same message.
                return await self._hand_over(_replay([event], events), keep=True)
            if event.kind == "error":
                await self.fail(event.error or "Something went wrong while answering.")
                return event
        await self.fail(NO_ANSWER)
        return None

    async def fail(self, message: str) -> None:
        """One short error line under whatever text arrived."""
        if self.fallback is not None:
            await self.fallback.fail(message)
            return
        note = f":warning: {defang(message)}"
        if self.ts and not self._stopped:
            self._pending += f"\n\n{note}" if (self._shown or self._pending) else note
            await self._stop()
            return
        await self._hand_over(None, keep=False, note=message)

    # -- streaming -----------------------------------------------------------------

    async def _show_status(self, status: str) -> None:
        assert self.on_status is not None
        try:
            await self.on_status(status.strip("_ "))
        except SlackApiError as exc:  # only the waiting line depends on it
            log.info("slack: could not set the status: %s", exc.response.get("error"))

    async def _open(self) -> AsyncChatStream:
        if self._stream is None:
            extra: dict[str, str] = {}
            if self.recipient_user_id:
                extra["recipient_user_id"] = self.recipient_user_id
            if self.recipient_team_id:
                extra["recipient_team_id"] = self.recipient_team_id
            # buffer_size=1: every append we make is sent; we batch by time ourselves.
            self._stream = await self.client.chat_stream(
                channel=self.channel, thread_ts=self.thread_ts, buffer_size=1, **extra
            )
        return self._stream

    async def _append(self) -> None:
        if not self._pending:
            return
        stream = await self._open()
        text = defang(self._pending)
        first = stream.ts is None
        once = iter([text])  # the helper keeps unsent text buffered: a retry adds none
        try:
            await _retrying(
                lambda: stream.append(markdown_text=next(once, "")), "chat.appendStream"
            )
        except SlackApiError as exc:
            if first:  # startStream refused: this workspace or place cannot stream
                log.info("slack: native streaming refused (%s)", exc.response.get("error"))
                raise StreamRefused from None
            raise
        self.ts = str(stream.ts or "")
        self._shown += self._pending
        self._pending = ""
        self._last_append = asyncio.get_running_loop().time()

    async def _stop(self, blocks: list[dict[str, Any]] | None = None) -> None:
        stream = await self._open()
        text = defang(self._pending)
        first = stream.ts is None
        once = iter([text])  # the helper keeps unsent text buffered: a retry adds none
        try:
            await _retrying(
                lambda: stream.stop(markdown_text=next(once, "") or None, blocks=blocks),
                "chat.stopStream",
            )
        except SlackApiError as exc:
            if first:
                log.info("slack: native streaming refused (%s)", exc.response.get("error"))
                raise StreamRefused from None
            raise
        self.ts = str(stream.ts or "")
        self._stopped = True
        self._shown += self._pending
        self._pending = ""

    async def _finish(self, done: StreamEvent) -> None:
        final = done.text
        if done.finish_reason == "cancelled":
            final = f"{final.rstrip()}\n\n{CANCELLED}" if final.strip() else CANCELLED
        elif not final.strip():
            final = EMPTY_ANSWER
        streamed = self._shown + self._pending
        if final.startswith(streamed):
            # The usual case: what was streamed is the start of the answer; send the rest.
            self._pending = final[len(self._shown) :]
            await self._stop(self.final_blocks() if self.final_blocks else None)
            return
        # `done` carries the whole text and it differs (a lost delta, moderation): stop
        # the stream and rewrite its message with the exact final answer.
        self._pending = ""
        await self._stop()
        await self._hand_over(_replay([done], _nothing()), keep=True)

    async def _hand_over(
        self,
        events: AsyncIterator[StreamEvent] | None,
        *,
        keep: bool,
        note: str = "",
    ) -> StreamEvent | None:
        """Continue with chat.update: on this answer's message when ``keep`` (it exists)."""
        keep = keep and bool(self.ts)
        if keep and not self._stopped:
            self._pending = ""
            try:
                await self._stop()
            except SlackApiError as exc:  # already over on Slack's side: edit it as it is
                log.info("slack: could not stop the stream: %s", exc.response.get("error"))
                self._stopped = True
        fallback = SlackStreamWriter(
            self.client,
            self.channel,
            self.thread_ts,
            interval=self.edit_interval,
            limit=self.limit,
        )
        self.fallback = fallback
        if keep and self.ts:
            fallback.posted.append(_Posted(self.ts, to_mrkdwn(self._shown)))
        if note:
            await fallback.fail(note)
            return None
        if not fallback.posted:
            await fallback.start()
        assert events is not None
        return await fallback.stream(events)


async def _nothing() -> AsyncIterator[StreamEvent]:
    """No further events (the final one is replayed on its own)."""
    for _ in ():
        yield _


def native_or_edits(
    client: AsyncWebClient,
    channel: str,
    thread_ts: str | None,
    *,
    mode: str,
    user: str,
    team: str,
    interval: float,
    edit_interval: float,
    limit: int,
    on_status: StatusSink | None = None,
) -> NativeStreamWriter | SlackStreamWriter:
    """The writer for one answer.

    ``mode`` "auto": native streaming where the answer has a status place (the assistant
    pane: ``on_status``), "on": for every threaded answer, "off": never. A stream is always
    a reply (Slack wants a ``thread_ts``), so a top-level DM answer keeps the chat.update
    path. In channels Slack must know whom the stream answers (``user``, ``team``).
    """
    native = mode == "on" or (mode == "auto" and on_status is not None)
    if not native or not thread_ts:
        return SlackStreamWriter(client, channel, thread_ts, interval=edit_interval, limit=limit)
    return NativeStreamWriter(
        client,
        channel,
        thread_ts,
        recipient_user_id=user,
        recipient_team_id=team,
        interval=interval,
        edit_interval=edit_interval,
        limit=limit,
        on_status=on_status,
    )
