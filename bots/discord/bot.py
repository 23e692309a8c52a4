"""The Discord bot: decides which messages to answer; the pipeline answers them.

Triggers: a mention in a guild channel (answered in a new thread on that
message), any message in a thread the bot started or was mentioned in, and
DMs (unless turned off). Each answer goes through :class:`bots.answer.Pipeline`
on a :class:`~bots.discord.surface.DiscordSurface`.

``run()`` is the blocking entry point for ``corral discord``; ``build_bot()``
gives tests a client to start against a local fake Discord.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging

import discord
from discord import app_commands

from bots.answer import Pipeline, Question
from bots.attachments import text_for_files
from bots.client import TurnClient
from bots.discord.commands import register_commands
from bots.discord.context_menus import register_context_menus
from bots.discord.feedback import register_feedback
from bots.discord.settings import DiscordSettings, load_discord_settings
from bots.discord.state import DiscordState
from bots.discord.surface import (
    ERROR_PREFIX,
    HINT_PREFIX,
    THREAD_ARCHIVE_MINUTES,
    DiscordSurface,
    Reference,
    author_of,
    question_in,
    strip_mention,
    thread_name,
)
from bots.team import TeamControls, env_over_file
from shared.permissions import Actor, Decision
from shared.settings import Settings, SettingsError
from shared.team_config import ConfigWatcher

log = logging.getLogger(__name__)

# discord.py encodes and decodes JSON with orjson whenever orjson is importable (other
# packages bring it in). orjson refuses the lone surrogates a Discord message can carry: the
# gateway event carrying it, or the thread named after it, is then lost and the question is
# never answered. The standard library takes them (the worker cleans them from the text).
discord.utils._to_json = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=True)
discord.utils._from_json = json.loads  # type: ignore[assignment]

USAGE = HINT_PREFIX + "Mention me with a question, e.g. `@corral how do I rotate a log file?`"


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
        # The CORRAL_DISCORD_* settings laid over the config file (they win).
        fold = env_over_file(self.config, self.config.allowed_guilds)
        self.team = TeamControls("discord", self.turns.aredis, fold, watcher=watcher)
        self.pipeline = Pipeline(settings, self.turns, self.team)
        self._answering: set[asyncio.Task[object]] = set()  # answers in progress
        self.tree = app_commands.CommandTree(self)
        register_commands(self.tree, self)
        register_context_menus(self.tree, self)  # "Ask corral", "Summarize thread"
        register_feedback(self.tree, self, self.team)  # 👍/👎 reactions, /feedback

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

    def decide(self, guild: discord.Guild | None, channel: object, user: object) -> Decision:
        """Permissions (shared/permissions.py) for this user in this place."""
        roles = frozenset(
            str(role.id) for role in getattr(user, "roles", ()) if not role.is_default()
        )
        # A thread counts as its parent channel.
        where = channel.parent_id if isinstance(channel, discord.Thread) else None
        where = where or getattr(channel, "id", None)
        actor = Actor(
            platform="discord",
            user=str(getattr(user, "id", "")),
            workspace=str(guild.id) if guild else "",
            channel=str(where) if where else "",
            roles=roles,
            is_dm=guild is None,
        )
        return self.team.decide(actor)

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
                refusal = await self.team.refusal(decision, str(message.author.id))
                if refusal is not None:
                    if refusal:  # a quiet notice: no ping, nothing enqueued
                        notice = ERROR_PREFIX + refusal
                        await message.reply(notice, mention_author=False, silent=True)
                    return
        try:
            await self._answer_message(message, channel, mentioned, text)
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

    async def _answer_message(
        self, message: discord.Message, channel: object, mentioned: bool, text: str
    ) -> None:
        me_id = self.user.id if self.user else 0
        asked = (message.author.id, message.id, message.channel.id)
        # Each question names its author: in a shared thread the model tells speakers apart.
        files, author = message.attachments, author_of(message.author)
        if isinstance(channel, discord.Thread):
            if not (
                mentioned or channel.owner_id == me_id or await self.memory.in_thread(channel.id)
            ):
                return
            if mentioned:
                await self.memory.join_thread(channel.id)
            if not text:
                if mentioned:
                    await message.reply(USAGE, mention_author=False)
                return
            if await self.memory.first_delivery(message.id):  # else a replayed delivery
                await self.answer(
                    question_in(channel, text, *asked, attachments=files, author=author),
                    channel,
                    message,
                )
            return
        if isinstance(channel, discord.DMChannel):
            if not text:
                await message.reply(USAGE, mention_author=False)
            elif await self.memory.first_delivery(message.id):
                await self.answer(
                    question_in(channel, text, *asked, attachments=files, author=author),
                    channel,
                    message,
                )
            return
        if not mentioned or not isinstance(channel, discord.TextChannel):
            return
        if not text:
            await message.reply(USAGE, mention_author=False)
            return
        if not await self.memory.first_delivery(message.id):
            return  # before creating a thread: a second one would fail
        thread = await message.create_thread(
            name=thread_name(text), auto_archive_duration=THREAD_ARCHIVE_MINUTES
        )
        await self.memory.join_thread(thread.id)
        await self.answer(
            question_in(thread, text, *asked, new_thread=True, attachments=files, author=author),
            thread,
        )

    # Answering

    async def answer(
        self, question: Question, channel: discord.abc.Messageable, reference: Reference = None
    ) -> None:
        """Answer ``question`` in ``channel`` (replying to ``reference``)."""
        me = self.user.id if self.user else 0
        interval = self.config.edit_interval
        surface = DiscordSurface(
            channel, self.memory, me, int(question.message_id), reference, interval=interval
        )
        task = asyncio.current_task()
        if task is not None:
            self._answering.add(task)
        try:
            await self.pipeline.answer(question, surface)
        finally:
            if task is not None:
                self._answering.discard(task)

    async def _notify(self, channel: object, text: str) -> None:
        if isinstance(channel, discord.abc.Messageable):
            try:
                await channel.send(ERROR_PREFIX + text)
            except discord.HTTPException:
                log.warning("could not deliver an error notice to channel %s", channel)


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
