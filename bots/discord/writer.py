"""One streaming answer's Discord messages: placeholder, paced edits, rollover.

The writer never queues edits. It keeps the whole answer so far and, at most
once per ``interval``, makes the messages in the channel show it: it re-splits
the text and edits the messages whose content changed, sending more messages
when the answer outgrew them. So when an edit is held up (discord.py waits out
a 429's ``retry_after`` inside the call) the text that streamed in meanwhile
simply goes out with the next edit; and an edit that fails outright is retried
from the same state. Nothing is lost and the final state always equals the
final text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import discord

from bots.splitting import split_message

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
FINAL_ATTEMPTS = 5  # failed syncs tolerated once the answer is complete
# Notices start with a marker, so rebuilding history from a thread can leave them out.
ERROR_PREFIX = "⚠️ "
HINT_PREFIX = "💡 "
CANCELLED = "_(cancelled)_"  # a turn whose message was deleted; not an error
NOTICE_PREFIXES = (ERROR_PREFIX, HINT_PREFIX, CANCELLED)


class ReplyWriter:
    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        reference: discord.Message | discord.PartialMessage | None = None,
        interval: float = 1.0,
        limit: int = MESSAGE_LIMIT,
    ) -> None:
        self.channel = channel
        self.reference = reference
        self.interval = interval
        self.limit = limit
        self.text = ""  # the answer so far
        self.status = ""  # shown while there is no answer text yet
        self.messages: list[discord.Message] = []
        self._shown: list[str] = []  # what each message in `messages` shows now
        self._dirty = asyncio.Event()
        self._complete = False
        self._task: asyncio.Task[None] | None = None

    async def start(self, status: str) -> None:
        """Send the placeholder now (the user sees a reaction at once), then pace edits."""
        self.status = status
        await self._sync()
        self._task = asyncio.create_task(self._run(), name="discord-reply-writer")

    def set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self._dirty.set()

    def append(self, delta: str) -> None:
        if delta:
            self.text += delta
            self._dirty.set()

    def restart(self, status: str) -> None:
        """The job runs again from the start (a retry): drop the partial answer."""
        self.text = ""
        self.set_status(status)
        self._dirty.set()

    async def finish(self, text: str) -> None:
        """Show exactly ``text`` (the worker's final answer) and stop."""
        self.text = text
        await self._close()

    async def fail(self, error: str) -> None:
        """End with a short notice: in place of the placeholder, or after a partial answer."""
        notice = ERROR_PREFIX + error
        if self.text:
            await self._close()
            with contextlib.suppress(discord.HTTPException):
                await self.channel.send(notice)
        else:
            self.status = notice
            await self._close()

    def render(self) -> list[str]:
        pieces = split_message(self.text, self.limit) if self.text.strip() else []
        return pieces or [self.status or "…"]

    async def _close(self) -> None:
        self._complete = True
        self._dirty.set()
        if self._task is None:  # never started: one direct attempt
            await self._sync()
            return
        await self._task

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            complete = self._complete
            began = time.monotonic()
            try:
                await self._sync()
            except (discord.HTTPException, discord.RateLimited, OSError) as exc:
                # Kept dirty: the next round sends the then-current state.
                failures += 1
                log.warning("updating a reply failed (%s); will retry", type(exc).__name__)
                self._dirty.set()
                if complete and failures >= FINAL_ATTEMPTS:
                    log.error("giving up on updating a reply after %d failures", failures)
                    return
            else:
                if complete and not self._dirty.is_set():
                    return
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    async def _sync(self) -> None:
        pieces = self.render()
        for index, piece in enumerate(pieces):
            if index < len(self.messages):
                if self._shown[index] != piece:
                    self.messages[index] = await self.messages[index].edit(content=piece)
                    self._shown[index] = piece
            else:
                reference = self.reference if index == 0 else None
                message = await self.channel.send(
                    piece,
                    reference=reference,  # type: ignore[arg-type]
                    mention_author=False,
                    allowed_mentions=discord.AllowedMentions.none(),
                )
                self.messages.append(message)
                self._shown.append(piece)
        # A final text shorter than the streamed one (rare) leaves spare messages.
        while len(self.messages) > len(pieces):
            await self.messages[-1].delete()
            self.messages.pop()
            self._shown.pop()
