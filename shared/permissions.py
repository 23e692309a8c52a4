"""Who may use corral where: one pure function over the team config.

Both bots describe the person and the place as an :class:`Actor` and ask
:func:`decide`. The answer says whether to go on, why not, and whether the
refusal is about the *place* (the bot is not enabled there: stay silent, as a
bot that was never invited would) or about the *person* (tell them once,
privately, unless the config asks for silence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared.team_config import Permissions

Scope = Literal["", "place", "user"]


@dataclass(frozen=True)
class Actor:
    platform: str  # "discord" / "slack"
    user: str
    workspace: str = ""  # Discord guild / Slack team; "" in a Discord DM
    channel: str = ""  # a thread's parent channel
    roles: frozenset[str] = field(default_factory=frozenset)  # role / user group ids
    is_dm: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    scope: Scope = ""  # what refused: the place or the user
    admin: bool = False
    notify: bool = False  # tell the refused user (a short private notice)


def is_admin(actor: Actor, perms: Permissions) -> bool:
    return actor.user in perms.admins


def decide(actor: Actor, perms: Permissions) -> Decision:
    """Allow or deny, with a reason. Places are checked first, then people.

    Place rules (workspace, DMs, channel) bind admins too: they say where the bot
    is switched on at all. User and role lists do not apply to admins.
    """

    def place(reason: str) -> Decision:
        return Decision(False, reason, "place")

    allow, block = perms.allow, perms.block
    if actor.workspace and actor.workspace in block.guilds:
        return place(f"workspace {actor.workspace} is blocked")
    if actor.workspace and allow.guilds and actor.workspace not in allow.guilds:
        return place(f"workspace {actor.workspace} is not allowed")
    if actor.is_dm:
        if not perms.allow_dms:
            return place("direct messages are off")
    else:
        if actor.channel in block.channels:
            return place(f"channel {actor.channel} is blocked")
        if allow.channels and actor.channel not in allow.channels:
            return place(f"channel {actor.channel} is not allowed")
    if is_admin(actor, perms):
        return Decision(True, "admin", admin=True)

    def person(reason: str) -> Decision:
        return Decision(False, reason, "user", notify=perms.on_refusal == "notice")

    if actor.user in block.users:
        return person(f"user {actor.user} is blocked")
    blocked_roles = sorted(actor.roles & set(block.roles))
    if blocked_roles:
        return person(f"role {blocked_roles[0]} is blocked")
    if allow.users or allow.roles:
        if actor.user in allow.users:
            return Decision(True, "user allowed")
        allowed_roles = sorted(actor.roles & set(allow.roles))
        if allowed_roles:
            return Decision(True, f"role {allowed_roles[0]} allowed")
        return person(f"user {actor.user} is not on the allow-list")
    return Decision(True, "no restriction")
