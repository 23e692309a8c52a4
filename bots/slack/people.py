"""Slack display names for the authors of shared-thread messages.

Events carry only a user id; ``users.info`` (scope ``users:read``) gives the
name people see. Names are cached for a while per user: a busy thread asks
once, not per message. Without the scope (or on any Slack error) the author
keeps just the id, which still tells speakers apart.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from shared.contract import Author, Message

log = logging.getLogger(__name__)

NAME_TTL_S = 3600.0
MISS_TTL_S = 60.0  # an unknown name is asked for again soon (a scope may be added)
CACHE_LIMIT = 5000

# Per Web API client (one per workspace token): user id -> (looked up at, display name).
_caches: weakref.WeakKeyDictionary[AsyncWebClient, dict[str, tuple[float, str]]] = (
    weakref.WeakKeyDictionary()
)


async def display_name(client: AsyncWebClient, user: str) -> str:
    """The user's display name ("" when Slack will not say)."""
    names = _caches.setdefault(client, {})
    cached = names.get(user)
    if cached and time.monotonic() - cached[0] < (NAME_TTL_S if cached[1] else MISS_TTL_S):
        return cached[1]
    name = ""
    try:
        reply = await client.users_info(user=user)
        info = reply.get("user") or {}
        profile = info.get("profile") or {}
        name = str(
            profile.get("display_name") or profile.get("real_name") or info.get("name") or ""
        )
    except SlackApiError as exc:
        log.info("slack: no display name for %s: %s", user, exc.response.get("error"))
    if len(names) >= CACHE_LIMIT:
        names.clear()  # simple bound; names are cheap to look up again
    names[user] = (time.monotonic(), name)
    return name


async def slack_author(client: AsyncWebClient, user: str) -> Author:
    """The asker of a turn, as the contract names them."""
    return Author(id=user, name=await display_name(client, user))


async def name_authors(client: AsyncWebClient, messages: Sequence[Message]) -> list[Message]:
    """``messages`` with a display name on every author that has only an id."""
    named: list[Message] = []
    for message in messages:
        if message.author is not None and not message.author.name:
            name = await display_name(client, message.author.id)
            author = Author(id=message.author.id, name=name)
            message = message.model_copy(update={"author": author})
        named.append(message)
    return named
