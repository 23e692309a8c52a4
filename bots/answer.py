"""One answer, whatever the surface: build the turn, queue it, follow its stream, show it.

Discord, Slack, the HTTP API and the terminal chat all answer through this
module, so each rule is written once:

- :class:`Reply` folds a job's :class:`~shared.contract.StreamEvent` s into what a
  reader shows: the text so far, retries, cancel, errors, usage. It is pure.
- :class:`PacedReply` keeps a chat platform's messages in step with a Reply, at
  most one round of edits per interval, never queueing edits.
- :class:`Pipeline` answers one chat :class:`Question` end to end on a
  :class:`Surface`: the few things a chat platform provides (render a Reply as
  messages, post / edit / delete one, post a notice, read back its history,
  offer feedback under a finished answer). A platform with a streaming API of
  its own shows the answer with its own :class:`View` instead of a PacedReply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bots.attachments import SharedFile, read_attachments, with_attachments
from bots.client import TurnClient
from bots.team import TeamControls, trimmed_notice
from shared.contract import (
    Author,
    Message,
    Platform,
    ReplyTarget,
    StreamEvent,
    ToolCallOut,
    Turn,
    Usage,
    same_author,
)
from shared.contract import conversation_key as _conversation_key
from shared.settings import Settings
from shared.turnqueue import QueueFull

log = logging.getLogger(__name__)

# waiting: queued; started: a worker runs it; retrying: an attempt failed and another
# follows; done / failed: the final event came; lost: the stream went silent first.
Phase = Literal["waiting", "started", "retrying", "done", "failed", "lost"]
WAITING = frozenset({"queued", "rate_limited", "deferred", "scheduled"})  # RQ statuses
POSITION_POLL_S = 2.0  # how often a waiting answer's place in line is refreshed
FINAL_ATTEMPTS = 5  # failed syncs tolerated once the answer is complete


# The reducer


@dataclass(frozen=True)
class Change:
    """What one event did to the answer's text."""

    appended: str = ""  # new text at the end
    dropped: str = ""  # text taken back: a new attempt writes the answer again


@dataclass
class Reply:
    """Everything a reader shows of one turn, folded from its events by :meth:`apply`.

    A plain record: the platforms read its fields (kept current by every change)
    and never call back into this module.
    """

    text: str = ""
    phase: Phase = "waiting"
    problem: str = ""  # why an attempt or the turn failed: short, user-presentable
    code: str = ""  # the failure's machine-readable cause when it is the asker's mistake
    finish_reason: str = ""
    usage: Usage | None = None
    model: str = ""
    tool_calls: list[ToolCallOut] = field(default_factory=list)  # an API caller's tools
    attempts: int = 0
    ahead: int = 0  # turns before this one in the queue, while it waits
    final: bool = False  # done, failed or lost: nothing more will come
    cancelled: bool = False  # done because the asker cancelled
    empty: bool = False  # done without any text, and not cancelled

    def apply(self, event: StreamEvent) -> Change:
        change = self._apply(event)
        self._settle()
        return change

    def _settle(self) -> None:
        self.final = self.phase in ("done", "failed", "lost")
        self.cancelled = self.phase == "done" and self.finish_reason == "cancelled"
        self.empty = self.phase == "done" and not self.cancelled and not self.text.strip()

    def _apply(self, event: StreamEvent) -> Change:
        if event.model:
            self.model = event.model
        if event.kind == "started":
            self.attempts += 1
            self.phase = "started"
            return self._new_attempt(event.resume_from)
        if event.kind == "delta":
            if self.phase == "retrying":  # its `started` was lost: it starts afresh
                self._new_attempt(0)
            if self.phase in ("waiting", "retrying"):
                self.phase = "started"  # its `started` was lost: the text says it all
            self.text += event.text
            return Change(appended=event.text)
        if event.kind == "done":
            # `done` carries the whole text: it makes up for any delta a reader lost.
            before, self.text = self.text, event.text
            self.phase = "done"
            self.finish_reason = event.finish_reason or "stop"
            self.usage = event.usage
            self.tool_calls = list(event.tool_calls)
            return Change(
                appended=event.text[len(before) :] if event.text.startswith(before) else ""
            )
        self.problem, self.code = event.error, event.code
        # A retrying error keeps the text: whether it stays is the next `started`'s call.
        self.phase = "retrying" if event.retrying else "failed"
        return Change()

    def _new_attempt(self, resume_from: int) -> Change:
        """The one place that decides what a new attempt does to the text shown so far.

        An attempt that continues an answer whose worker died (worker/resume.py) says
        so on its ``started``: the first ``resume_from`` characters stay and its deltas
        carry on after them, so nothing is taken back. Any other attempt writes the
        answer from its start, so the partial text goes (readers replace it, or give up
        if it already left).
        """
        kept = self.text[:resume_from]
        dropped, self.text = self.text[len(kept) :], kept
        return Change(dropped=dropped)

    def place(self, status: str, ahead: int) -> None:
        """Where the turn stands in the queue (polled while it waits)."""
        if self.phase != "waiting":
            return
        if status in WAITING:
            self.ahead = ahead
        elif status == "started":
            self.phase = "started"
        self._settle()

    def fail(self, problem: str) -> None:
        """The turn ends here, for a reason of ours (queue full, a platform failure…)."""
        self.phase, self.problem = "failed", problem
        self._settle()

    def lose(self) -> None:
        """No final event within the time a job may wait and run: no worker will answer."""
        self.phase = "lost"
        self._settle()


def silence_timeout(settings: Settings) -> float:
    """Silence longer than a turn may wait plus run means no worker will answer it."""
    return float(settings.job_ttl + settings.job_timeout)


def merge_runs(messages: list[Message]) -> list[Message]:
    """Join consecutive messages of one role: chat templates want alternating roles, and
    a long answer spans several platform messages.

    Messages are joined only when one person wrote them: in a shared thread, who said
    what must survive the rebuild (the worker names each speaker).
    """
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1].role == message.role and same_author(merged[-1], message):
            joined = f"{merged[-1].content}\n\n{message.content}"
            merged[-1] = merged[-1].model_copy(update={"content": joined})
        else:
            merged.append(message)
    return merged


# What a chat platform provides


@dataclass(frozen=True)
class Wording:
    """What a platform says when the pipeline itself has to speak."""

    queue_down: str  # the turn could not be queued
    broken: str  # something on our side failed after that
    reset: str  # how to start over, for the trimmed-history notice


class Surface(Protocol):
    """Where one answer is shown on a chat platform: all the pipeline needs of it."""

    wording: Wording
    interval: float  # seconds between rounds of edits
    # Post the placeholder before queueing (a place we cannot write to costs no turn),
    # or after (it shows the place in line at once, and a refusal is one message).
    early_placeholder: bool

    def render(self, reply: Reply) -> list[str]:
        """The messages that show ``reply``, in order (never empty)."""
        ...

    async def post(self, text: str, first: bool) -> Any:
        """Post one more message; returns what :meth:`edit` and :meth:`delete` take."""
        ...

    async def edit(self, posted: Any, text: str) -> Any: ...

    async def delete(self, posted: Any) -> None: ...

    async def notice(self, text: str) -> None:
        """A one-line hint under the answer; a failure to post it is only logged."""
        ...

    async def history(self) -> list[Message]:
        """The conversation before the question, read back from the platform."""
        ...

    def busy(self) -> AbstractAsyncContextManager[Any]:
        """Held while the turn is answered (e.g. a typing indicator)."""
        ...

    async def finished(self, job_id: str, shown: Sequence[tuple[Any, str]]) -> None:
        """A complete answer now shows in ``shown`` (handles and texts, in order): offer
        feedback under it. A failure here is the platform's to log; the answer stands."""
        ...


class View(Protocol):
    """What shows one answer while it is written: a :class:`PacedReply` over a Surface,
    or a platform's own streaming (kept in step with the same :class:`Reply`)."""

    reply: Reply

    @property
    def posted(self) -> Sequence[tuple[Any, str]]:
        """The messages showing a finished answer (handles and texts), for feedback."""
        ...

    @property
    def started(self) -> bool: ...

    async def start(self) -> None: ...

    def changed(self) -> None: ...

    async def follow(self, events: AsyncIterator[StreamEvent]) -> Reply: ...

    async def fail(self, problem: str) -> None: ...

    def abandon(self) -> None: ...


@dataclass(frozen=True)
class Question:
    """A chat message an adapter decided to answer, in the contract's terms."""

    platform: Platform
    workspace: str
    channel: str
    thread: str
    user: str
    message_id: str
    text: str
    asked_in: str  # the channel message_id lives in: deleting it there cancels the turn
    reply_to: ReplyTarget | None = None
    files: Sequence[SharedFile] = ()
    earlier: bool = True  # turns may precede it: rebuild a lost history from the platform
    author: Author | None = None  # who asked, by name and id: shared threads name speakers
    context: str = ""  # where the asker is (e.g. the channel they look at), told to the model

    @property
    def conversation(self) -> str:
        return _conversation_key(self.platform, self.channel, self.thread)


_TURN_IDS = ("platform", "workspace", "channel", "thread", "user", "message_id")


# Showing a Reply as chat messages


class PacedReply:
    """The messages showing one :class:`Reply`, kept in step with it.

    Never queues edits: at most once per interval it renders the whole reply
    and edits the messages whose text changed, posts more when the answer
    outgrew them and deletes spare ones when it shrank. An edit held up by a
    rate limit or one that failed is simply superseded by the next round, so
    nothing is lost and the final state always shows the final reply.
    """

    def __init__(self, surface: Surface, reply: Reply | None = None) -> None:
        self.surface = surface
        self.reply = reply or Reply()
        self.posted: list[tuple[Any, str]] = []  # (handle, text shown)
        self._dirty = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Post the placeholder now (the user sees a reaction at once), then pace edits."""
        await self._sync()
        self._task = asyncio.create_task(self._run(), name="paced-reply")

    def changed(self) -> None:
        self._dirty.set()

    async def follow(self, events: AsyncIterator[StreamEvent]) -> Reply:
        """Show a job's events until its final one (or silence), then the final state."""
        async for event in events:
            self.reply.apply(event)
            self.changed()
            if self.reply.final:
                break
        if not self.reply.final:
            self.reply.lose()
        await self.close()
        return self.reply

    async def fail(self, problem: str) -> None:
        self.reply.fail(problem)
        await self.close()

    async def close(self) -> None:
        """Bring the messages to the reply's state and stop; an edit in flight finishes."""
        self._closing.set()
        self._dirty.set()
        if self._task is None:  # never started: one direct attempt
            await self._sync()
        else:
            await self._task

    def abandon(self) -> None:
        """Stop pacing at once (the bot is shutting down)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            closing = self._closing.is_set()
            try:
                await self._sync()
            except Exception as exc:  # noqa: BLE001 - kept dirty: the next round resends
                failures += 1
                log.warning("updating a reply failed (%s); will retry", type(exc).__name__)
                self._dirty.set()
                if closing and failures >= FINAL_ATTEMPTS:
                    log.error("giving up on updating a reply after %d failures", failures)
                    return
                await asyncio.sleep(self.surface.interval)
                continue
            if closing and not self._dirty.is_set():
                return
            # A whole interval between rounds, counted from the end of this one (a slow
            # round must not bunch the next edits up against the platform's rate
            # limit), unless the reply is complete: then show it now.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.surface.interval)

    async def _sync(self) -> None:
        pieces = self.surface.render(self.reply)
        for index, piece in enumerate(pieces):
            if index < len(self.posted):
                handle, shown = self.posted[index]
                if shown != piece:
                    self.posted[index] = (await self.surface.edit(handle, piece), piece)
            else:
                self.posted.append((await self.surface.post(piece, index == 0), piece))
        # The answer shrank (a retried attempt starting over): remove the spare messages.
        while len(self.posted) > len(pieces):
            await self.surface.delete(self.posted[-1][0])
            self.posted.pop()


# The pipeline


class Pipeline:
    """Answers chat questions: the rules every chat platform shares, written once."""

    def __init__(self, settings: Settings, turns: TurnClient, team: TeamControls) -> None:
        self.settings = settings
        self.turns = turns
        self.team = team

    async def answer(self, question: Question, surface: Surface, view: View | None = None) -> None:
        """Answer ``question`` on ``surface`` (shown by ``view``: by default paced edits);
        whatever fails ends as one line there."""
        view = view or PacedReply(surface)
        try:
            async with surface.busy():
                await self._answer(question, surface, view)
        except Exception:  # once queued, the job is the worker's; its answer still lands
            log.exception("answering message %s failed", question.message_id)
            with contextlib.suppress(Exception):
                await view.fail(surface.wording.broken)
        finally:
            view.abandon()

    async def _answer(self, question: Question, surface: Surface, view: View) -> None:
        if surface.early_placeholder:
            try:
                await view.start()
            except Exception as exc:  # noqa: BLE001 - nowhere to write: queue nothing
                # The type only: a platform error's text may echo request details.
                log.warning(
                    "cannot post in %s (%s): nothing queued", question.channel, type(exc).__name__
                )
                return
        try:
            turn, hint = await self.turn_for(question, surface)
            job_id = await self.turns.submit(turn, asked_in=question.asked_in)
        except QueueFull as exc:  # overloaded or rate-limited: one polite line, at once
            await view.fail(exc.user_message)
            return
        except Exception:  # the user's message is still there to resend
            log.exception("queueing a turn for %s failed", question.channel)
            await view.fail(surface.wording.queue_down)
            return
        if hint:  # images left out: say so at once, not after the answer
            await surface.notice(hint)
        await self._place(job_id, view.reply)
        if view.started:
            view.changed()
        else:
            await view.start()
        watcher = asyncio.create_task(self._watch_position(job_id, view))
        try:
            reply = await view.follow(
                self.turns.events(job_id, timeout=silence_timeout(self.settings))
            )
        finally:
            watcher.cancel()
        if reply.phase == "done" and reply.usage is not None:
            await self.team.record_usage(turn.user, turn.channel, turn.model or "", reply.usage)
            if reply.usage.history_dropped > 0:
                dropped = reply.usage.history_dropped
                await surface.notice(trimmed_notice(dropped, surface.wording.reset))
        if reply.phase == "done" and not reply.cancelled and not reply.empty:
            await surface.finished(job_id, view.posted)  # after the usage: quotas come first

    async def turn_for(self, question: Question, surface: Surface) -> tuple[Turn, str]:
        """The turn to queue, and a line for the user about attachments left out ("" if none)."""
        history = None
        if question.earlier and not await self.turns.has_history(question.conversation):
            # The store lost this conversation (expired, or Redis was wiped): the
            # platform itself still has it.
            history = merge_runs(await surface.history()) or None
        effective = await self.team.effective(question.channel)
        system_prompt = effective.system_prompt
        if question.context:
            base = system_prompt or self.settings.system_prompt
            system_prompt = f"{base.rstrip()}\n\n{question.context}"
        text, attachments, hint = question.text, [], ""
        if question.files:
            limits = self.team.config.limits
            ttl = self.settings.history_ttl
            read = await read_attachments(question.files, limits, self.turns.aredis, ttl)
            text, attachments = with_attachments(question.text, read.blocks), read.attachments
            hint = read.hint()
        # Where and who, under the contract's own names.
        ids = {name: getattr(question, name) for name in _TURN_IDS}
        turn = Turn(
            **ids,
            text=text,
            attachments=attachments,
            reply_to=question.reply_to,
            system_prompt=system_prompt,
            model=self.team.queue_model(effective.model),
            history=history,
            author=question.author,
        )
        return turn, hint

    async def _place(self, job_id: str, reply: Reply) -> bool:
        """Update the reply's place in line; False once it no longer waits."""
        try:
            where = await self.turns.position(job_id)
        except Exception:  # only the placeholder's wording depends on it
            log.warning("could not read the place in line of job %s", job_id, exc_info=True)
            return False
        reply.place(where.status, where.ahead)
        return where.status in WAITING

    async def _watch_position(self, job_id: str, view: View) -> None:
        while view.reply.phase == "waiting":
            await asyncio.sleep(POSITION_POLL_S)
            waiting = await self._place(job_id, view.reply)
            view.changed()
            if not waiting:
                return
