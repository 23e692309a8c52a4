"""Message context-menu commands: "Ask corral" and "Summarize thread".

Right-click (or long-press) a message → Apps:

* **Ask corral** answers the selected message: in a new thread on it (in a text
  channel), in the thread it is in, or — where the bot itself cannot post (a DM
  or group DM reached through a user install) — in the interaction's own reply.
* **Summarize thread** summarizes the thread the message is in (or started), in
  that thread.

Both work for user installs too (``allowed_installs`` / ``allowed_contexts``),
both go through the same permissions and quotas as a mention (corral.yaml), and
both answer through the pipeline. Each interaction is acknowledged before
anything slow happens: Discord drops one not answered within 3 seconds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import discord
from discord import app_commands

from bots.answer import Pipeline
from bots.discord.commands import NOT_HERE, Host
from bots.discord.state import DiscordState
from bots.discord.surface import (
    HINT_PREFIX,
    THREAD_ARCHIVE_MINUTES,
    DiscordSurface,
    author_of,
    question_in,
    strip_mention,
    thread_name,
)
from shared.contract import Message

log = logging.getLogger(__name__)

ASK = "Ask corral"
SUMMARIZE = "Summarize thread"
SUMMARY_REQUEST = (
    "Summarize this thread for someone who has not read it: the question or topic, "
    "what was decided or answered, and what is still open. Name who said what."
)
NO_TEXT = "That message has no text to ask about."
NO_THREAD = "That message is not in a thread, and no thread was started on it."
EVERYWHERE = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)
ANY_INSTALL = app_commands.AppInstallationType(guild=True, user=True)


class MenuHost(Host, Protocol):
    """What the menus need of the bot beyond the slash commands' needs."""

    pipeline: Pipeline

    @property
    def user(self) -> discord.ClientUser | None: ...


def register_context_menus(tree: app_commands.CommandTree, bot: MenuHost) -> None:
    async def ask(interaction: discord.Interaction, message: discord.Message) -> None:
        await _ask(bot, interaction, message)

    async def summarize(interaction: discord.Interaction, message: discord.Message) -> None:
        await _summarize(bot, interaction, message)

    for name, callback in ((ASK, ask), (SUMMARIZE, summarize)):
        tree.add_command(
            app_commands.ContextMenu(
                name=name,
                callback=callback,
                allowed_contexts=EVERYWHERE,
                allowed_installs=ANY_INSTALL,
            )
        )


async def _refused(bot: MenuHost, interaction: discord.Interaction) -> bool:
    """Permissions and quota, as for a mention; a refusal is one private line."""
    decision = bot.decide(interaction.guild, interaction.channel, interaction.user)
    if decision.scope == "place":
        await interaction.response.send_message(NOT_HERE, ephemeral=True)
        return True
    refusal = await bot.team.refusal(decision, str(interaction.user.id))
    if refusal is not None:
        await interaction.response.send_message(refusal or NOT_HERE, ephemeral=True)
        return True
    return False


def _bot_can_post(interaction: discord.Interaction) -> bool:
    """Is the bot itself in this place (guild install), not only reached through a user?"""
    return interaction.guild is not None and interaction.is_guild_integration()


async def _ask(bot: MenuHost, interaction: discord.Interaction, target: discord.Message) -> None:
    if await _refused(bot, interaction):
        return
    text = strip_mention(target.content, bot.user.id if bot.user else 0)
    if not text:
        await interaction.response.send_message(NO_TEXT, ephemeral=True)
        return
    channel = interaction.channel
    # The words are the target's author's; the quota and the cancel right are the asker's.
    asked = (text, interaction.user.id, target.id)
    author = author_of(target.author)
    if not _bot_can_post(interaction) or not isinstance(
        channel, discord.TextChannel | discord.Thread
    ):
        await interaction.response.defer(thinking=True)  # the answer replaces "thinking…"
        where = interaction.channel_id or 0
        question = question_in(channel, *asked, where, new_thread=True, author=author)
        replying = ReplySurface(interaction, bot.memory, bot.user.id if bot.user else 0)
        await bot.pipeline.answer(question, replying)
        return
    await interaction.response.send_message(
        f"Asking corral about {target.jump_url}…", ephemeral=True
    )
    if isinstance(channel, discord.Thread):
        await bot.memory.join_thread(channel.id)
        question = question_in(channel, *asked, channel.id, author=author)
        await bot.answer(question, channel, target)
        return
    thread, fresh = await _thread_on(channel, target, text)
    await bot.memory.join_thread(thread.id)
    question = question_in(thread, *asked, channel.id, new_thread=fresh, author=author)
    await bot.answer(question, thread)


async def _thread_on(
    channel: discord.TextChannel, target: discord.Message, text: str
) -> tuple[discord.Thread, bool]:
    """The thread on ``target``: a new one, or the one someone already started there."""
    existing = channel.guild.get_thread(target.id)
    if existing is not None:
        return existing, False
    thread = await channel.get_partial_message(target.id).create_thread(
        name=thread_name(text), auto_archive_duration=THREAD_ARCHIVE_MINUTES
    )
    return thread, True


async def _summarize(
    bot: MenuHost, interaction: discord.Interaction, target: discord.Message
) -> None:
    if await _refused(bot, interaction):
        return
    channel = interaction.channel
    thread: discord.Thread | None = channel if isinstance(channel, discord.Thread) else None
    if thread is None and interaction.guild is not None:
        thread = interaction.guild.get_thread(target.id)  # a thread started on the message
    if thread is None or not _bot_can_post(interaction):
        await interaction.response.send_message(NO_THREAD, ephemeral=True)
        return
    await interaction.response.send_message(f"Summarizing {thread.mention}…", ephemeral=True)
    await bot.memory.join_thread(thread.id)
    # The interaction is newer than every message: the whole thread is read back.
    asked = (SUMMARY_REQUEST, interaction.user.id, interaction.id, thread.id)
    await bot.answer(question_in(thread, *asked, author=author_of(interaction.user)), thread)


class ReplySurface(DiscordSurface):
    """An answer in the interaction's own reply, where the bot cannot post (user installs).

    The first message is the deferred "thinking…" response, edited as the answer grows;
    more go as follow-ups. There is no thread to read back and nothing to react on.
    """

    def __init__(self, interaction: discord.Interaction, state: DiscordState, bot_id: int) -> None:
        # The channel is only named here: posting goes through the interaction instead.
        super().__init__(interaction.channel, state, bot_id, interaction.id)  # type: ignore[arg-type]
        self.interaction = interaction

    async def post(self, text: str, first: bool) -> Any:
        if first:
            return await self.interaction.edit_original_response(content=text)
        return await self.interaction.followup.send(
            text, wait=True, allowed_mentions=discord.AllowedMentions.none()
        )

    async def notice(self, text: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            await self.interaction.followup.send(HINT_PREFIX + text)

    def busy(self) -> AbstractAsyncContextManager[object]:
        return contextlib.nullcontext()

    async def history(self) -> list[Message]:
        return []

    async def finished(self, job_id: str, shown: Sequence[tuple[Any, str]]) -> None:
        return None  # the bot cannot react where it is not installed
