"""Slash commands: /ask, /reset, /status, and the team controls /model, /system,
/settings and /usage.

Each one acknowledges the interaction first (Discord drops an interaction
that is not answered within 3 seconds) and does the slow part afterwards.
"""

from __future__ import annotations

import logging
from typing import Protocol

import discord
from discord import app_commands

from bots.answer import Question
from bots.client import TurnClient
from bots.discord.state import DiscordState
from bots.discord.surface import (
    THREAD_ARCHIVE_MINUTES,
    Reference,
    author_of,
    place_of,
    question_in,
    thread_name,
)
from bots.team import TeamControls
from shared.permissions import Decision
from shared.settings import Settings

log = logging.getLogger(__name__)

NOT_HERE = "I'm not enabled in this channel."


class Host(Protocol):
    """What the commands need of the bot (so this module never imports it)."""

    settings: Settings
    turns: TurnClient
    memory: DiscordState
    team: TeamControls

    def decide(self, guild: discord.Guild | None, channel: object, user: object) -> Decision: ...

    async def answer(
        self, question: Question, channel: discord.abc.Messageable, reference: Reference = None
    ) -> None: ...


def register_commands(tree: app_commands.CommandTree, bot: Host) -> None:
    tree.on_error = _on_error  # type: ignore[method-assign]

    @tree.command(name="ask", description="Ask corral a question")
    @app_commands.describe(question="What you want to know")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        await _ask(bot, interaction, question)

    @tree.command(name="reset", description="Forget this thread's conversation history")
    async def reset(interaction: discord.Interaction) -> None:
        await _reset(bot, interaction)

    @tree.command(name="status", description="Queue depth, worker and model")
    async def status(interaction: discord.Interaction) -> None:
        await _status(bot, interaction)

    @tree.command(name="model", description="Set this channel's model (admins)")
    @app_commands.describe(name="One of the configured models")
    async def model(interaction: discord.Interaction, name: str) -> None:
        await _control(bot, interaction, "model", name)

    @model.autocomplete("name")
    async def model_names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = [n for n in bot.team.model_names() if current.lower() in n.lower()]
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]

    @tree.command(name="system", description="Set this channel's system prompt (admins)")
    @app_commands.describe(text="The new system prompt; 'default' goes back to the default")
    async def system(interaction: discord.Interaction, text: str) -> None:
        await _control(bot, interaction, "system", text)

    @tree.command(name="settings", description="Show this channel's model and system prompt")
    async def settings(interaction: discord.Interaction) -> None:
        if await _may_use(bot, interaction):
            await _control(bot, interaction, "settings", "")

    @tree.command(name="usage", description="Tokens used today (admins also see the team's)")
    async def usage(interaction: discord.Interaction) -> None:
        if await _may_use(bot, interaction):
            await _control(bot, interaction, "usage", "")


async def _on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """Log the details; the user gets one short line, never a stack trace."""
    log.error("slash command failed: %s", error, exc_info=error)
    text = "⚠️ Something went wrong on my side; please try again."
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the user about a failed slash command")


async def _ask(bot: Host, interaction: discord.Interaction, question: str) -> None:
    channel = interaction.channel
    decision = bot.decide(interaction.guild, channel, interaction.user)
    if decision.scope == "place":
        await interaction.response.send_message(NOT_HERE, ephemeral=True)
        return
    refusal = await bot.team.refusal(decision, str(interaction.user.id))
    if refusal is not None:  # nothing is enqueued; a silent refusal still has to answer
        await interaction.response.send_message(refusal or NOT_HERE, ephemeral=True)
        return
    # The acknowledgement doubles as the question, visible to everyone: a
    # thread (in a channel) hangs off it, like off a message that mentions us.
    echo = f"**{interaction.user.display_name}** asked: {question}"[:2000]
    await interaction.response.send_message(echo)
    try:
        original = await interaction.original_response()
        asked = (question, interaction.user.id, original.id)
        author = author_of(interaction.user)  # shared threads name who asked
        if isinstance(channel, discord.TextChannel):
            thread = await channel.get_partial_message(original.id).create_thread(
                name=thread_name(question), auto_archive_duration=THREAD_ARCHIVE_MINUTES
            )
            await bot.memory.join_thread(thread.id)
            asking = question_in(thread, *asked, channel.id, new_thread=True, author=author)
            await bot.answer(asking, thread)
        elif isinstance(channel, discord.Thread | discord.DMChannel):
            if isinstance(channel, discord.Thread):
                await bot.memory.join_thread(channel.id)
            asking = question_in(channel, *asked, channel.id, author=author)
            await bot.answer(asking, channel, original)
        else:
            await interaction.followup.send(NOT_HERE, ephemeral=True)
    except Exception:
        log.exception("answering /ask failed")
        await interaction.followup.send("⚠️ Something went wrong on my side; please try again.")


async def _reset(bot: Host, interaction: discord.Interaction) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    channel = interaction.channel
    if channel is None:
        await interaction.followup.send(NOT_HERE, ephemeral=True)
        return
    key = place_of(channel).key
    forgot = await bot.turns.reset(key)
    # Also stops the bot from rebuilding the forgotten turns from the thread.
    await bot.memory.mark_reset(key, interaction.id)
    text = "Done: I forgot this conversation." if forgot else "Nothing to forget here."
    await interaction.followup.send(text, ephemeral=True)


async def _status(bot: Host, interaction: discord.Interaction) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    state = await bot.turns.status()
    worker = f"up ({state.workers})" if state.workers else "down"
    model = ", ".join(state.models) or bot.settings.display_model_name
    text = f"Queue: {state.queue_depth} waiting · Worker: {worker} · Model: {model}"
    await interaction.followup.send(text, ephemeral=True)


def _channel_id(interaction: discord.Interaction) -> str:
    channel = interaction.channel
    return place_of(channel).channel if channel is not None else ""


async def _may_use(bot: Host, interaction: discord.Interaction) -> bool:
    """Viewing commands follow the same permissions as questions (quotas aside)."""
    decision = bot.decide(interaction.guild, interaction.channel, interaction.user)
    if decision.allowed:
        return True
    text = bot.team.refusal_text() if decision.scope == "user" and decision.notify else NOT_HERE
    await interaction.response.send_message(text, ephemeral=True)
    return False


async def _control(bot: Host, interaction: discord.Interaction, word: str, arg: str) -> None:
    user, channel = str(interaction.user.id), _channel_id(interaction)
    reply = await bot.team.control(word, arg, channel, user, bot.settings)
    await interaction.response.send_message(reply[:2000], ephemeral=True)
