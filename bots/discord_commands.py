"""Slash commands: /ask, /reset and /status.

Each one acknowledges the interaction first (Discord drops an interaction
that is not answered within 3 seconds) and does the slow part afterwards.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from .discord_turns import place_of, thread_name

if TYPE_CHECKING:
    from .discord_bot import CorralDiscord

log = logging.getLogger(__name__)

NOT_HERE = "I'm not enabled in this channel."


def register_commands(tree: app_commands.CommandTree, bot: CorralDiscord) -> None:
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


async def _ask(bot: CorralDiscord, interaction: discord.Interaction, question: str) -> None:
    from .discord_bot import Question  # the bot module imports this one

    channel = interaction.channel
    if not bot.allowed_in(interaction.guild, channel):
        await interaction.response.send_message(NOT_HERE, ephemeral=True)
        return
    # The acknowledgement doubles as the question, visible to everyone: a
    # thread (in a channel) hangs off it, like off a message that mentions us.
    echo = f"**{interaction.user.display_name}** asked: {question}"[:2000]
    await interaction.response.send_message(echo)
    try:
        original = await interaction.original_response()
        user = interaction.user.id
        if isinstance(channel, discord.TextChannel):
            thread = await channel.get_partial_message(original.id).create_thread(
                name=thread_name(question), auto_archive_duration=1440
            )
            await bot.memory.join_thread(thread.id)
            asked = Question(place_of(thread), thread, question, user, original.id, new_thread=True)
        elif isinstance(channel, discord.Thread | discord.DMChannel):
            if isinstance(channel, discord.Thread):
                await bot.memory.join_thread(channel.id)
            asked = Question(place_of(channel), channel, question, user, original.id, original)
        else:
            await interaction.followup.send(NOT_HERE, ephemeral=True)
            return
        await bot.answer(asked)
    except Exception:
        log.exception("answering /ask failed")
        await interaction.followup.send("⚠️ Something went wrong on my side; please try again.")


async def _reset(bot: CorralDiscord, interaction: discord.Interaction) -> None:
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


async def _status(bot: CorralDiscord, interaction: discord.Interaction) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    state = await bot.turns.status()
    worker = f"up ({state.workers})" if state.workers else "down"
    model = ", ".join(state.models) or bot.settings.display_model_name
    text = f"Queue: {state.queue_depth} waiting · Worker: {worker} · Model: {model}"
    await interaction.followup.send(text, ephemeral=True)
