"""Slash commands: /ask, /reset, /status, and the team controls /model, /system,
/settings and /usage.

Each one acknowledges the interaction first (Discord drops an interaction
that is not answered within 3 seconds) and does the slow part afterwards.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bots.discord.turns import author_of, place_of, thread_name
from bots.team import SYSTEM_PROMPT_LIMIT

if TYPE_CHECKING:
    from bots.discord.bot import CorralDiscord

log = logging.getLogger(__name__)

NOT_HERE = "I'm not enabled in this channel."
ADMINS_ONLY = "Only corral admins can change this channel's settings; /settings shows them."


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

    @tree.command(name="model", description="Set this channel's model (admins)")
    @app_commands.describe(name="One of the configured models")
    async def model(interaction: discord.Interaction, name: str) -> None:
        await _set_model(bot, interaction, name)

    @model.autocomplete("name")
    async def model_names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = [n for n in bot.team.model_names() if current.lower() in n.lower()]
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]

    @tree.command(name="system", description="Set this channel's system prompt (admins)")
    @app_commands.describe(text="The new system prompt; 'default' goes back to the default")
    async def system(interaction: discord.Interaction, text: str) -> None:
        await _set_system(bot, interaction, text)

    @tree.command(name="settings", description="Show this channel's model and system prompt")
    async def settings(interaction: discord.Interaction) -> None:
        await _settings(bot, interaction)

    @tree.command(name="usage", description="Tokens used today (admins also see the team's)")
    async def usage(interaction: discord.Interaction) -> None:
        await _usage(bot, interaction)


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
    from bots.discord.bot import Question  # the bot module imports this one

    channel = interaction.channel
    decision = bot.decide(interaction.guild, channel, interaction.user)
    if decision.scope == "place":
        await interaction.response.send_message(NOT_HERE, ephemeral=True)
        return
    refusal = await bot.refusal(decision, interaction.user.id)
    if refusal is not None:  # nothing is enqueued; a silent refusal still has to answer
        await interaction.response.send_message(refusal or NOT_HERE, ephemeral=True)
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
        asked.author = author_of(interaction.user)  # issue 17 hook: shared threads
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


def _channel_id(interaction: discord.Interaction) -> str:
    channel = interaction.channel
    return place_of(channel).channel if channel is not None else ""


async def _admin_only(bot: CorralDiscord, interaction: discord.Interaction) -> bool:
    """True for admins; everyone else gets one ephemeral line."""
    if bot.team.is_admin(str(interaction.user.id)):
        return True
    await interaction.response.send_message(ADMINS_ONLY, ephemeral=True)
    return False


async def _may_use(bot: CorralDiscord, interaction: discord.Interaction) -> bool:
    """Viewing commands follow the same permissions as questions (quotas aside)."""
    decision = bot.decide(interaction.guild, interaction.channel, interaction.user)
    if decision.allowed:
        return True
    text = bot.team.refusal_text() if decision.scope == "user" and decision.notify else NOT_HERE
    await interaction.response.send_message(text, ephemeral=True)
    return False


async def _set_model(bot: CorralDiscord, interaction: discord.Interaction, name: str) -> None:
    if not await _admin_only(bot, interaction):
        return
    names = bot.team.model_names()
    name = name.strip()
    if name not in names:
        known = ", ".join(names) or "none are configured (models in corral.yaml)"
        await interaction.response.send_message(
            f"Unknown model `{name}`. Models: {known}", ephemeral=True
        )
        return
    await bot.team.set_model(_channel_id(interaction), name)
    await interaction.response.send_message(f"This channel now uses `{name}`.", ephemeral=True)


async def _set_system(bot: CorralDiscord, interaction: discord.Interaction, text: str) -> None:
    if not await _admin_only(bot, interaction):
        return
    text = text.strip()
    if len(text) > SYSTEM_PROMPT_LIMIT:
        await interaction.response.send_message(
            f"That prompt is too long (at most {SYSTEM_PROMPT_LIMIT} characters).", ephemeral=True
        )
        return
    reset = text.lower() in ("default", "reset", "")
    await bot.team.set_system_prompt(_channel_id(interaction), "" if reset else text)
    done = "back to the default" if reset else "updated"
    await interaction.response.send_message(
        f"This channel's system prompt is {done}.", ephemeral=True
    )


async def _settings(bot: CorralDiscord, interaction: discord.Interaction) -> None:
    if not await _may_use(bot, interaction):
        return
    now = await bot.team.effective(_channel_id(interaction))
    model = now.model or bot.settings.display_model_name
    prompt = now.system_prompt or bot.settings.system_prompt
    text = f"Model: `{model}` ({now.model_source})\nSystem prompt ({now.prompt_source}): {prompt}"
    await interaction.response.send_message(text[:2000], ephemeral=True)


async def _usage(bot: CorralDiscord, interaction: discord.Interaction) -> None:
    if not await _may_use(bot, interaction):
        return
    report = await bot.team.usage_report(str(interaction.user.id))
    await interaction.response.send_message(report[:2000], ephemeral=True)
