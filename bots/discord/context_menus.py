"""Message context-menu commands: "Ask corral" and "Summarize thread".

Right-click (or long-press) a message → Apps:

* **Ask corral** answers the selected message: in a new thread on it (in a text
  channel), in the thread it is in, or — where the bot itself cannot post (a DM
  or group DM reached through a user install) — as the interaction's own reply.
* **Summarize thread** summarizes the thread the message is in (or started), in
  that thread.

Both work for user installs too (``allowed_installs`` / ``allowed_contexts``),
and both go through the same permissions and quotas as a mention
(``TeamControls.decide`` with corral.yaml). Each interaction is acknowledged
before anything slow happens: Discord drops one not answered within 3 seconds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bots.discord.turns import author_of, place_of, strip_mention, thread_name
from bots.splitting import split_message
from shared.contract import Turn

if TYPE_CHECKING:
    from bots.discord.bot import CorralDiscord

log = logging.getLogger(__name__)

ASK = "Ask corral"
SUMMARIZE = "Summarize thread"
SUMMARY_REQUEST = (
    "Summarize this thread for someone who has not read it: the question or topic, "
    "what was decided or answered, and what is still open. Name who said what."
)
NOT_HERE = "I'm not enabled here."
NO_TEXT = "That message has no text to ask about."
NO_THREAD = "That message is not in a thread, and no thread was started on it."
EVERYWHERE = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)
ANY_INSTALL = app_commands.AppInstallationType(guild=True, user=True)
DISCORD_LIMIT = 2000


def register_context_menus(tree: app_commands.CommandTree, bot: CorralDiscord) -> None:
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


async def _refused(bot: CorralDiscord, interaction: discord.Interaction) -> bool:
    """Permissions and quota, as for a mention; a refusal is one private line."""
    decision = bot.decide(interaction.guild, interaction.channel, interaction.user)
    if decision.scope == "place":
        await interaction.response.send_message(NOT_HERE, ephemeral=True)
        return True
    refusal = await bot.refusal(decision, interaction.user.id)
    if refusal is not None:
        await interaction.response.send_message(refusal or NOT_HERE, ephemeral=True)
        return True
    return False


def _bot_can_post(interaction: discord.Interaction) -> bool:
    """Is the bot itself in this place (guild install), not only reached through a user?"""
    return interaction.guild is not None and interaction.is_guild_integration()


async def _ask(
    bot: CorralDiscord, interaction: discord.Interaction, target: discord.Message
) -> None:
    from bots.discord.bot import Question  # the bot module imports this one

    if await _refused(bot, interaction):
        return
    me_id = bot.user.id if bot.user else 0
    text = strip_mention(target.content, me_id)
    if not text:
        await interaction.response.send_message(NO_TEXT, ephemeral=True)
        return
    channel = interaction.channel
    user = interaction.user.id
    if not _bot_can_post(interaction) or not isinstance(
        channel, discord.TextChannel | discord.Thread
    ):
        await _answer_in_reply(bot, interaction, target, text)
        return
    await interaction.response.send_message(
        f"Asking corral about {target.jump_url}…", ephemeral=True
    )
    if isinstance(channel, discord.Thread):
        await bot.memory.join_thread(channel.id)
        asked = Question(place_of(channel), channel, text, user, target.id, target)
    else:
        thread, fresh = await _thread_on(channel, target, text)
        await bot.memory.join_thread(thread.id)
        asked = Question(place_of(thread), thread, text, user, target.id, new_thread=fresh)
    asked.source_channel_id = channel.id
    asked.author = author_of(target.author)  # the words are theirs; the quota is the asker's
    await bot.answer(asked)


async def _thread_on(
    channel: discord.TextChannel, target: discord.Message, text: str
) -> tuple[discord.Thread, bool]:
    """The thread on ``target``: a new one, or the one someone already started there."""
    existing = channel.guild.get_thread(target.id)
    if existing is not None:
        return existing, False
    thread = await channel.get_partial_message(target.id).create_thread(
        name=thread_name(text), auto_archive_duration=1440
    )
    return thread, True


async def _summarize(
    bot: CorralDiscord, interaction: discord.Interaction, target: discord.Message
) -> None:
    from bots.discord.bot import Question

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
    asked = Question(place_of(thread), thread, SUMMARY_REQUEST, interaction.user.id, interaction.id)
    asked.author = author_of(interaction.user)
    await bot.answer(asked)


async def _answer_in_reply(
    bot: CorralDiscord, interaction: discord.Interaction, target: discord.Message, text: str
) -> None:
    """Where the bot cannot post: the interaction's own (public) reply carries the answer."""
    await interaction.response.defer(thinking=True)
    place = place_of(interaction.channel) if interaction.channel else None
    channel = place.channel if place else str(interaction.channel_id or "")
    effective = await bot.team.effective(channel)
    turn = Turn(
        platform="discord",
        workspace=place.workspace if place else "",
        channel=channel,
        thread=place.thread if place else "",
        user=str(interaction.user.id),
        message_id=str(target.id),
        text=text,
        author=author_of(target.author),
        system_prompt=effective.system_prompt,
        model=bot.team.queue_model(effective.model),
    )
    try:
        job_id = await bot.turns.submit(turn)
        silence = float(bot.settings.job_ttl + bot.settings.job_timeout)
        answer = "The model could not answer."
        async for event in bot.turns.events(job_id, timeout=silence):
            if event.kind == "done":
                if event.usage is not None:
                    await bot.team.record_usage(turn.user, channel, turn.model or "", event.usage)
                answer = event.text.strip() or "The model returned an empty answer."
                break
            if event.final:
                answer = event.error or answer
                break
    except Exception as exc:  # one short line, whatever failed
        log.warning("answering a context-menu question failed", exc_info=True)
        answer = getattr(exc, "user_message", "") or "Something went wrong; please try again."
    chunks = split_message(answer, DISCORD_LIMIT)
    await interaction.edit_original_response(content=chunks[0])
    for chunk in chunks[1:]:
        await interaction.followup.send(chunk)
