"""👍/👎 reactions on finished Discord answers, and the admins' ``/feedback`` summary.

When an answer is complete the bot reacts to its last message with 👍 and 👎,
so people only have to click one; whoever adds either reaction votes
(recorded with the turn in Redis by :mod:`shared.feedback`: one vote per person
and answer). The bot's own reactions are not votes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from shared import feedback

if TYPE_CHECKING:
    from bots.discord.bot import CorralDiscord

log = logging.getLogger(__name__)

VOTE_EMOJI: dict[str, feedback.Vote] = {"👍": "up", "👎": "down"}


async def offer_reactions(bot: CorralDiscord, messages: list[discord.Message], job_id: str) -> None:
    """React to the answer's last message so a vote is one click; remember which turn it is."""
    if not messages:
        return
    last = messages[-1]
    try:
        await feedback.remember_answer(bot.turns.aredis, "discord", str(last.id), job_id)
        for emoji in VOTE_EMOJI:
            await last.add_reaction(emoji)
    except discord.HTTPException as exc:  # the answer stands without the prompts
        log.info("could not add feedback reactions: %s", exc)
    except Exception:
        log.warning("could not offer feedback on job %s", job_id, exc_info=True)


def register_feedback(tree: app_commands.CommandTree, bot: CorralDiscord) -> None:
    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
        try:
            await _record(bot, payload)
        finally:
            bot.dispatch("corral_reaction_done", payload)  # lets tests await "dealt with"

    bot.event(on_raw_reaction_add)

    @tree.command(name="feedback", description="How people rated corral's answers (admins)")
    @app_commands.allowed_installs(guilds=True, users=False)
    async def summary(interaction: discord.Interaction) -> None:
        if not bot.team.is_admin(str(interaction.user.id)):
            text = "Only corral admins can see the feedback summary."
        else:
            text = feedback.format_summary(await feedback.summary(bot.turns.aredis, "discord"))
        await interaction.response.send_message(text[:2000], ephemeral=True)


async def _record(bot: CorralDiscord, payload: discord.RawReactionActionEvent) -> None:
    me = bot.user
    vote = VOTE_EMOJI.get(str(payload.emoji))
    if me is None or payload.user_id == me.id or vote is None:
        return
    if payload.message_author_id is not None and payload.message_author_id != me.id:
        return  # a reaction on someone else's message: not about an answer
    job_id = await feedback.answer_of(bot.turns.aredis, "discord", str(payload.message_id))
    if job_id is None:
        return
    channel = bot.get_channel(payload.channel_id)
    parent = getattr(channel, "parent_id", None) or payload.channel_id
    await feedback.record(
        bot.turns.aredis,
        platform="discord",
        job_id=job_id,
        user=str(payload.user_id),
        vote=vote,
        channel=str(parent),
    )
