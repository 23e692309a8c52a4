"""Streams one answer into Slack: a placeholder, throttled edits, more messages as it grows.

The rendered answer is a list of chunks (one Slack message each). A flush
edits only the chunks whose text changed and posts new ones at the end, so a
long answer continues in the thread instead of being truncated. Edits are
throttled to one round per ``interval`` (Slack answers 429 beyond ~1 edit a
second per message); whatever a skipped or failed edit would have shown is
written by the final flush, which always uses the worker's complete text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.mrkdwn import escape, to_mrkdwn
from bots.splitting import split_message
from shared.contract import StreamEvent

log = logging.getLogger(__name__)

THINKING = "_thinking…_"
NO_ANSWER = "No answer arrived in time; the worker may be down or very busy. Please try again."
EMPTY_ANSWER = "_(the model returned an empty answer)_"
CANCELLED = "_(cancelled)_"  # the asker deleted the question or ran `/ask cancel`
MAX_RATE_LIMIT_WAITS = 5  # after the client's own retry handler has given up once


@dataclass
class _Posted:
    ts: str
    text: str


class SlackStreamWriter:
    def __init__(
        self,
        client: AsyncWebClient,
        channel: str,
        thread_ts: str | None,
        *,
        interval: float = 1.0,
        limit: int = 3500,
        split: Callable[[str, int], list[str]] = split_message,
    ) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts or None
        self.interval = interval
        self.limit = limit
        self.split = split
        self.posted: list[_Posted] = []
        self._markdown = ""  # the answer so far, as the model wrote it
        self._status = THINKING  # shown while there is no answer text yet
        self._note = ""  # an error line under whatever text arrived
        self._cancelled = False
        self._dirty = asyncio.Event()
        self._closing = asyncio.Event()

    async def start(self, status: str = THINKING) -> str:
        """Post the placeholder the answer will replace; returns its ts."""
        self._status = status
        await self._flush()
        return self.posted[0].ts

    def set_status(self, status: str) -> None:
        self._status = status
        self._dirty.set()

    async def stream(self, events: AsyncIterator[StreamEvent]) -> StreamEvent | None:
        """Follow a job's events to the end; returns its final event (None if it went silent)."""
        flusher = asyncio.create_task(self._flush_loop())
        final: StreamEvent | None = None
        try:
            async for event in events:
                self._apply(event)
                if event.final:
                    final = event
                    break
        finally:
            # Let an edit in flight finish (never cancel mid-post: that could duplicate a message).
            self._closing.set()
            self._dirty.set()
            await flusher
        if final is None:
            self._note = NO_ANSWER
        await self._flush()
        return final

    async def fail(self, message: str) -> None:
        """Show one short error line, keeping any text already shown."""
        self._note = message
        await self._flush()

    def _apply(self, event: StreamEvent) -> None:
        if event.kind == "started":
            # Also the start of a retried attempt: its text replaces any partial one.
            self._markdown = ""
            self._status = THINKING
        elif event.kind == "delta":
            self._markdown += event.text
        elif event.kind == "done":
            # `done` carries the whole text: it repairs anything a lost delta dropped.
            self._markdown = event.text
            self._cancelled = event.finish_reason == "cancelled"
            if not event.text.strip():
                self._status = CANCELLED if self._cancelled else EMPTY_ANSWER
        elif event.kind == "error" and event.retrying:
            # The job runs again from scratch: drop the partial text, say why we wait.
            self._markdown = ""
            self._status = f"_{escape(event.error or 'hit a snag')}, retrying…_"
        elif event.kind == "error":
            self._note = event.error or "Something went wrong while answering."
        self._dirty.set()

    def render(self) -> list[str]:
        text = to_mrkdwn(self._markdown) if self._markdown.strip() else self._status
        if self._cancelled and self._markdown.strip():
            text = f"{text}\n\n{CANCELLED}"
        chunks = self.split(text, self.limit) if len(text) > self.limit else [text]
        if self._note:
            note = f":warning: {escape(self._note)}"
            if len(chunks[-1]) + len(note) + 2 <= self.limit and self._markdown.strip():
                chunks[-1] = f"{chunks[-1]}\n\n{note}"
            elif self._markdown.strip():
                chunks.append(note)
            else:
                chunks = [note]
        return chunks

    async def _flush_loop(self) -> None:
        while not self._closing.is_set():
            await self._dirty.wait()
            if self._closing.is_set():
                return
            self._dirty.clear()
            try:
                await self._flush()
            except SlackApiError as exc:
                # Not fatal mid-stream: the final flush writes the complete text anyway.
                log.warning("slack update failed: %s", exc.response.get("error"))
            except Exception:
                log.warning("slack update failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval)

    async def _flush(self) -> None:
        chunks = self.render()
        for index, text in enumerate(chunks):
            if index < len(self.posted):
                if self.posted[index].text != text:
                    ts = self.posted[index].ts
                    await self._call("chat_update", channel=self.channel, ts=ts, text=text)
                    self.posted[index].text = text
            else:
                reply = await self._call(
                    "chat_postMessage",
                    channel=self.channel,
                    text=text,
                    thread_ts=self.thread_ts,
                    unfurl_links=False,
                )
                self.posted.append(_Posted(str(reply["ts"]), text))
        # The answer shrank (a retried job restarting): remove the now-surplus messages.
        while len(self.posted) > len(chunks):
            extra = self.posted.pop()
            await self._call("chat_delete", channel=self.channel, ts=extra.ts)

    async def _call(self, method: str, **kwargs: object) -> dict:
        """One Web API call, waiting out 429s (Retry-After) the client's handler did not absorb."""
        for attempt in range(MAX_RATE_LIMIT_WAITS + 1):
            try:
                response = await getattr(self.client, method)(**kwargs)
                return response.data if isinstance(response.data, dict) else {}
            except SlackApiError as exc:
                if exc.response.status_code != 429 or attempt == MAX_RATE_LIMIT_WAITS:
                    raise
                delay = _retry_after(exc.response.headers)
                log.info("slack rate limit on %s, waiting %.0fs", method, delay)
                await asyncio.sleep(min(delay, 60.0))
        raise AssertionError("unreachable")


def _retry_after(headers: dict) -> float:
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            with contextlib.suppress(TypeError, ValueError):
                return max(float(value[0] if isinstance(value, list) else value), 0.0)
    return 1.0
