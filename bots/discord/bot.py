"""The Discord bot: decides which messages to answer and streams the answers.

Triggers: a mention in a guild channel (answered in a new thread on that
message), any message in a thread the bot started or was mentioned in, and
DMs (unless turned off). Each answer is one queued turn whose events a
:class:`~bots.discord.writer.ReplyWriter` turns into paced message edits.

``run()`` is the blocking entry point for ``corral discord``; ``build_bot()``
gives tests a client to start against a local fake Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import aiohttp
import discord
from discord import app_commands

from bots.attachments import (
    ReadAttachments,
    SharedFile,
    read_attachments,
    text_for_files,
    with_attachments,
)
from bots.client import TurnClient
from bots.discord.commands import register_commands
from bots.discord.context_menus import register_context_menus  # issue 17 hook
from bots.discord.feedback import offer_reactions, register_feedback  # issue 17 hook
from bots.discord.settings import DiscordSettings, load_discord_settings
from bots.discord.state import DiscordState
from bots.discord.turns import (
    Place,
    author_of,  # issue 17 hook: shared threads name the asker
    place_of,
    rebuild_history,
    strip_mention,
    thread_name,
)
from bots.discord.writer import CANCELLED, ERROR_PREFIX, HINT_PREFIX, ReplyWriter
from bots.team import TeamControls, trimmed_notice
from shared.contract import Author, ReplyTarget, Turn
from shared.permissions import Actor, Decision
from shared.settings import Settings, SettingsError
from shared.team_config import ConfigWatcher, TeamConfig, fold_env
from shared.turnqueue import Position, QueueFull

log = logging.getLogger(__name__)

USAGE = HINT_PREFIX + "Mention me with a question, e.g. `@corral how do I rotate a log file?`"
POSITION_POLL_S = 2.0  # how often the placeholder's place in line is refreshed
THREAD_ARCHIVE_MINUTES = 1440
WAITING = {"queued", "rate_limited", "deferred", "scheduled"}


@dataclass
class Question:
    """One thing to answer, from a message or from ``/ask``."""

    place: Place
    reply_channel: discord.abc.Messageable
    text: str
    user_id: int
    message_id: int
    reference: discord.Message | discord.PartialMessage | None = None
    new_thread: bool = False  # nothing earlier to rebuild history from
    attachments: tuple[discord.Attachment, ...] = ()
    source_channel_id: int = 0  # where message_id lives (0: the reply channel)
    author: Author | None = None  # issue 17 hook: who asked, for shared threads


class CorralDiscord(discord.Client):
    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        config: DiscordSettings | None = None,
        watcher: ConfigWatcher | None = None,
        **options: object,
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: must be switched on in the portal
        super().__init__(
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
            **options,  # type: ignore[arg-type]
        )
        self.settings = settings
        self.config = config or load_discord_settings()
        self.turns = TurnClient(settings, redis_url)
        self.memory = DiscordState(self.turns.aredis, settings.history_ttl)
        self.team = TeamControls("discord", self.turns.aredis, self._fold, watcher=watcher)
        self._answering: set[asyncio.Task[object]] = set()  # answers in progress
        self.tree = app_commands.CommandTree(self)
        register_commands(self.tree, self)
        register_context_menus(self.tree, self)  # issue 17 hook: "Ask corral", "Summarize"
        register_feedback(self.tree, self)  # issue 17 hook: 👍/👎 reactions, /feedback

    async def setup_hook(self) -> None:
        self.team.watch()  # live reload of corral.yaml
        if self.config.sync_commands:
            await self.tree.sync()

    async def close(self) -> None:
        # Answers still streaming would otherwise fail noisily on the closed
        # HTTP session; their jobs stay queued and are answered by the worker.
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)
        await self.team.close()
        await super().close()
        await self.turns.close()

    async def on_ready(self) -> None:
        log.info("connected to Discord as %s in %d guild(s)", self.user, len(self.guilds))

    # Which messages get an answer

    def _fold(self, config: TeamConfig) -> TeamConfig:
        """The config file with the CORRAL_DISCORD_* settings laid over it (they win)."""
        env = self.config
        return fold_env(
            config,
            guilds=env.allowed_guilds,
            channels=env.allowed_channels,
            allow_dms=env.allow_dms if "allow_dms" in env.model_fields_set else None,
            channel_prompts=env.channel_prompts,
        )

    def decide(self, guild: discord.Guild | None, channel: object, user: object) -> Decision:
        """Permissions (shared/permissions.py) for this user in this place."""
        roles = frozenset(
            str(role.id) for role in getattr(user, "roles", ()) if not role.is_default()
        )
        parent = channel.parent_id if isinstance(channel, discord.Thread) else None
        actor = Actor(
            platform="discord",
            user=str(getattr(user, "id", "")),
            workspace=str(guild.id) if guild else "",
            channel=str(parent or getattr(channel, "id", "")),
            roles=roles,
            is_dm=guild is None,
        )
        return self.team.decide(actor)

    def allowed_in(self, guild: discord.Guild | None, channel: object) -> bool:
        """Is the bot switched on in this place at all (whoever asks)?"""
        return self.decide(guild, channel, None).scope != "place"

    async def refusal(self, decision: Decision, user_id: int) -> str | None:
        """Why this user gets no answer ("" = refused silently), or None to go ahead."""
        if not decision.allowed:
            return self.team.refusal_text() if decision.notify else ""
        return await self.team.over_quota(str(user_id))

    async def _addressed(self, channel: object, mentioned: bool) -> bool:
        if mentioned or isinstance(channel, discord.DMChannel):
            return True
        if isinstance(channel, discord.Thread):
            me_id = self.user.id if self.user else 0
            return channel.owner_id == me_id or await self.memory.in_thread(channel.id)
        return False

    async def on_message(self, message: discord.Message) -> None:
        try:
            await self._on_message(message)
        finally:
            # Lets tests (and any listener) await "this message was dealt with".
            self.dispatch("corral_message_done", message)

    async def _on_message(self, message: discord.Message) -> None:
        me = self.user
        if me is None or message.author.bot or message.author.id == me.id:
            return  # never answer ourselves or other bots (no bot loops)
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return  # joins, pins, thread-created notices…
        channel = message.channel
        decision = self.decide(message.guild, channel, message.author)
        if decision.scope == "place":
            return  # not switched on here: silent, as if never invited
        mentioned = any(user.id == me.id for user in message.mentions)
        text = strip_mention(message.content, me.id)
        if not text and message.attachments:
            text = text_for_files([(a.filename, a.content_type or "") for a in message.attachments])
        if not decision.allowed or self.team.config.limits.daily_tokens_per_user:
            if await self._addressed(channel, mentioned):
                refusal = await self.refusal(decision, message.author.id)
                if refusal is not None:
                    if refusal:  # a quiet notice: no ping, nothing enqueued
                        notice = ERROR_PREFIX + refusal
                        await message.reply(notice, mention_author=False, silent=True)
                    return
        try:
            question = await self._question_from(message, channel, mentioned, text)
            if question is not None:
                question.attachments = tuple(message.attachments)
                question.source_channel_id = channel.id
                question.author = author_of(message.author)  # issue 17 hook
                await self.answer(question)
        except Exception:
            log.exception("answering message %s failed", message.id)
            await self._notify(channel, "Something went wrong on my side; please try again.")

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        """Deleting the message that asked cancels its turn (queued or running)."""
        try:
            cancelled = await self.turns.cancel_for_message(
                "discord", str(payload.channel_id), str(payload.message_id)
            )
        except Exception:
            log.warning(
                "could not cancel the turn of deleted message %s", payload.message_id, exc_info=True
            )
            cancelled = False
        if cancelled:
            log.info("cancelled the turn of deleted message %s", payload.message_id)
        self.dispatch("corral_delete_done", payload)  # lets tests await "dealt with"

    async def _question_from(
        self, message: discord.Message, channel: object, mentioned: bool, text: str
    ) -> Question | None:
        me_id = self.user.id if self.user else 0
        if isinstance(channel, discord.Thread):
            if not (
                mentioned or channel.owner_id == me_id or await self.memory.in_thread(channel.id)
            ):
                return None
            if mentioned:
                await self.memory.join_thread(channel.id)
            if not text:
                if mentioned:
                    await message.reply(USAGE, mention_author=False)
                return None
            if not await self.memory.first_delivery(message.id):
                return None  # a replayed delivery: answered already
            return Question(
                place_of(channel), channel, text, message.author.id, message.id, message
            )
        if isinstance(channel, discord.DMChannel):
            if not text:
                await message.reply(USAGE, mention_author=False)
                return None
            if not await self.memory.first_delivery(message.id):
                return None
            return Question(
                place_of(channel), channel, text, message.author.id, message.id, message
            )
        if not mentioned or not isinstance(channel, discord.TextChannel):
            return None
        if not text:
            await message.reply(USAGE, mention_author=False)
            return None
        if not await self.memory.first_delivery(message.id):
            return None  # before creating a thread: a second one would fail
        thread = await message.create_thread(
            name=thread_name(text), auto_archive_duration=THREAD_ARCHIVE_MINUTES
        )
        await self.memory.join_thread(thread.id)
        return Question(
            place_of(thread), thread, text, message.author.id, message.id, new_thread=True
        )

    # Answering

    async def answer(self, question: Question) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._answering.add(task)
        try:
            await self._answer(question)
        finally:
            self._answering.discard(task)  # type: ignore[arg-type]

    async def _answer(self, question: Question) -> None:
        turn, read = await self._turn_for(question)
        channel = question.reply_channel
        async with channel.typing():
            try:
                job_id = await self.turns.submit(turn)
            except QueueFull as exc:  # overloaded or rate-limited: one polite line, at once
                await self._notify(channel, exc.user_message)
                return
            except Exception:
                # The user's message is still there to resend; say so in one line.
                log.exception("enqueueing a turn failed")
                await self._notify(channel, "The queue is unavailable right now; try again soon.")
                return
            if read.hint():  # images left out: say so at once, not after the answer
                with contextlib.suppress(discord.HTTPException):
                    await channel.send(HINT_PREFIX + read.hint())
            source = question.source_channel_id or getattr(channel, "id", 0)
            try:
                await self.turns.remember(
                    "discord", str(source), str(question.message_id), job_id, turn.user
                )
            except Exception:  # only cancel-by-delete depends on it; the answer still comes
                log.warning("could not index job %s for cancellation", job_id, exc_info=True)
            writer = ReplyWriter(
                channel, reference=question.reference, interval=self.config.edit_interval
            )
            await writer.start(_waiting_text(await self.turns.position(job_id)))
            await self._stream(job_id, writer, turn)

    async def _turn_for(self, question: Question) -> tuple[Turn, ReadAttachments]:
        place = question.place
        history = None
        if not question.new_thread and not await self.turns.has_history(place.key):
            # The store lost this conversation (expired, or Redis was wiped):
            # the thread itself still has it.
            since = await self.memory.reset_point(place.key)
            bot_id = self.user.id if self.user else 0
            rebuilt = await rebuild_history(
                question.reply_channel, question.message_id, bot_id, since
            )
            history = rebuilt or None
        effective = await self.team.effective(place.channel)
        files = [_shared_file(a) for a in question.attachments]
        limits = self.team.config.limits
        read = await read_attachments(files, limits, self.turns.aredis, self.settings.history_ttl)
        turn = Turn(
            platform="discord",
            workspace=place.workspace,
            channel=place.channel,
            thread=place.thread,
            user=str(question.user_id),
            message_id=str(question.message_id),
            text=with_attachments(question.text, read.blocks),
            attachments=read.attachments,
            reply_to=ReplyTarget(
                channel=place.channel, thread=place.thread, message_id=str(question.message_id)
            ),
            system_prompt=effective.system_prompt,
            model=self.team.queue_model(effective.model),
            history=history,
            author=question.author,  # issue 17 hook
        )
        return turn, read

    async def _stream(self, job_id: str, writer: ReplyWriter, turn: Turn) -> None:
        watcher = asyncio.create_task(self._watch_position(job_id, writer))
        # Silence longer than a job may wait plus run means no worker will answer it.
        silence = float(self.settings.job_ttl + self.settings.job_timeout)
        try:
            async for event in self.turns.events(job_id, timeout=silence):
                if event.kind in ("started", "delta"):
                    watcher.cancel()
                if event.kind == "started":
                    # Also the start of a retried attempt: its text replaces the partial one,
                    # in the same placeholder message.
                    writer.restart("Thinking…")
                elif event.kind == "delta":
                    writer.append(event.text)
                elif event.kind == "done":
                    if event.usage is not None:
                        await self.team.record_usage(
                            turn.user, turn.channel, turn.model or "", event.usage
                        )
                    if event.finish_reason == "cancelled":
                        # The asker deleted the question: a short note, not an error.
                        text = event.text.rstrip()
                        await writer.finish(f"{text}\n\n{CANCELLED}" if text else CANCELLED)
                    elif event.text.strip():
                        await writer.finish(event.text)
                        await offer_reactions(self, writer.messages, job_id)  # issue 17 hook
                    else:
                        await writer.fail("The model returned an empty answer.")
                    if event.usage is not None and event.usage.history_dropped > 0:
                        notice = HINT_PREFIX + trimmed_notice(event.usage.history_dropped)
                        with contextlib.suppress(discord.HTTPException):
                            await writer.channel.send(notice)
                    return
                elif event.retrying:
                    writer.restart(f"{event.error or 'The model hit a problem'} Retrying…")
                else:
                    await writer.fail(event.error or "The model could not answer.")
                    return
            await writer.fail("No answer in time: the model seems to be down. Try again later.")
        finally:
            watcher.cancel()

    async def _watch_position(self, job_id: str, writer: ReplyWriter) -> None:
        while True:
            await asyncio.sleep(POSITION_POLL_S)
            try:
                where = await self.turns.position(job_id)
            except Exception:
                # Only the placeholder's wording depends on this; the answer still streams.
                log.warning("could not read the place in line of job %s", job_id, exc_info=True)
                return
            if where.status not in WAITING:
                return
            writer.set_status(_waiting_text(where))

    async def _notify(self, channel: object, text: str) -> None:
        if isinstance(channel, discord.abc.Messageable):
            try:
                await channel.send(ERROR_PREFIX + text)
            except discord.HTTPException:
                log.warning("could not deliver an error notice to channel %s", channel)


def _shared_file(attached: discord.Attachment) -> SharedFile:
    async def fetch(_most: int) -> bytes | None:
        # Only called when the declared size is within the limit; Discord's sizes are exact.
        try:
            return await attached.read()
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not download attachment %s: %s", attached.filename, exc)
            return None

    return SharedFile(attached.filename, attached.size, attached.content_type or "", fetch)


def _waiting_text(where: Position) -> str:
    if where.status in WAITING and where.ahead > 0:
        noun = "question" if where.ahead == 1 else "questions"
        return f"⏳ Waiting in line: {where.ahead} {noun} ahead of yours…"
    if where.status in WAITING:
        return "⏳ Waiting for the model…"
    return "Thinking…"


def build_bot(
    settings: Settings,
    redis_url: str,
    config: DiscordSettings | None = None,
    watcher: ConfigWatcher | None = None,
    **options: object,
) -> CorralDiscord:
    """The client, not yet connected; ``options`` go to :class:`discord.Client`."""
    return CorralDiscord(settings, redis_url, config, watcher, **options)


def run(settings: Settings, redis_url: str) -> None:
    """Run the bot until Ctrl-C (``corral discord``)."""
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise SettingsError("DISCORD_TOKEN is not set; see docs/discord.md")
    bot = build_bot(settings, redis_url)
    # discord.py sets up logging and handles SIGINT by closing the client cleanly.
    bot.run(settings.discord_token.get_secret_value(), log_handler=None)
