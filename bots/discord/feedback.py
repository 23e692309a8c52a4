"""Votes on Discord answers: 👍/👎 reactions recorded with the turn, and ``/feedback``.

A finished answer's last message gets the bot's own 👍 and 👎
(:meth:`bots.discord.surface.DiscordSurface.finished`), so people only have to
click one; whoever adds either reaction votes (recorded with the turn in Redis
by :mod:`shared.feedback`: one vote per person and answer). The bot's own
reactions are not votes.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bots.discord.surface import VOTE_EMOJI
from bots.team import TeamControls
from shared import feedback

log = logging.getLogger(__name__)


def register_feedback(
    tree: app_commands.CommandTree, client: discord.Client, team: TeamControls
) -> None:
    """The reaction listener and the admins' ``/feedback`` summary."""

    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
        try:
            await _record(client, team, payload)
        finally:
            client.dispatch("corral_reaction_done", payload)  # lets tests await "dealt with"

    client.event(on_raw_reaction_add)

    @tree.command(name="feedback", description="How people rated corral's answers (admins)")
    @app_commands.allowed_installs(guilds=True, users=False)
    async def summary(interaction: discord.Interaction) -> None:
        if not team.is_admin(str(interaction.user.id)):
            text = "Only corral admins can see the feedback summary."
        else:
            text = feedback.format_summary(await feedback.summary(team.redis, "discord"))
        await interaction.response.send_message(text[:2000], ephemeral=True)


async def _record(
    client: discord.Client, team: TeamControls, payload: discord.RawReactionActionEvent
) -> None:
    me = client.user
    vote = VOTE_EMOJI.get(str(payload.emoji))
    if me is None or payload.user_id == me.id or vote is None:
        return
    if payload.message_author_id is not None and payload.message_author_id != me.id:
        return  # a reaction on someone else's message: not about an answer
    job_id = await feedback.answer_of(team.redis, "discord", str(payload.message_id))
    if job_id is None:
        return
    channel = client.get_channel(payload.channel_id)
    parent = getattr(channel, "parent_id", None) or payload.channel_id
    await feedback.record(
        team.redis,
        platform="discord",
        job_id=job_id,
        user=str(payload.user_id),
        vote=vote,
        channel=str(parent),
    )
