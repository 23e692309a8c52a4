"""The App Home tab: the user's usage today and the channels' settings.

Published with ``views.publish`` each time the user opens the tab
(``app_home_opened``), so it always shows the current numbers. Admins also
see whether answers help (the 👍/👎 summary).
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.mrkdwn import escape
from bots.team import PREFS_PREFIX, TeamControls
from shared import feedback, usage

log = logging.getLogger(__name__)

CHANNELS_SHOWN = 20
PROMPT_SHOWN = 200
TEXT_LIMIT = 2900  # a section's text may hold 3,000 characters


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:TEXT_LIMIT]}}


def _short(text: str, limit: int = PROMPT_SHOWN) -> str:
    text = " ".join(text.split())
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


async def _configured_channels(team: TeamControls) -> list[str]:
    """Channels with settings: in corral.yaml, or set from chat (kept in Redis)."""
    found = list(team.config.channels)
    pattern = f"{PREFS_PREFIX}:slack:*"
    async for raw in team.redis.scan_iter(match=pattern, count=100):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        channel = name.rsplit(":", 1)[-1]
        if channel not in found:
            found.append(channel)
        if len(found) >= CHANNELS_SHOWN:
            break
    return found[:CHANNELS_SHOWN]


async def home_view(team: TeamControls, user: str, default_model: str, default_prompt: str) -> dict:
    mine = await usage.aused_by(team.redis, "slack", user)
    limit = team.config.limits.daily_tokens_per_user
    used = usage.format_tokens(mine) + (f" of {limit:,} allowed" if limit else "")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "corral"}},
        _section(f"*Your usage today:* {used}"),
        {"type": "divider"},
        _section(
            f"*Default model:* `{escape(default_model)}`\n"
            f"*Default system prompt:* {_short(team.config.system_prompt or default_prompt)}"
        ),
    ]
    lines = []
    for channel in await _configured_channels(team):
        now = await team.effective(channel)
        model = f"`{escape(now.model or default_model)}` ({now.model_source})"
        prompt = _short(now.system_prompt or default_prompt, 120)
        lines.append(f"<#{escape(channel)}>: model {model}; prompt ({now.prompt_source}): {prompt}")
    if lines:
        blocks.append(_section("*Channel settings*\n" + "\n".join(lines)))
    else:
        blocks.append(_section("*Channel settings:* every channel uses the defaults."))
    if team.is_admin(user):
        votes = await feedback.summary(team.redis, "slack")
        blocks += [{"type": "divider"}, _section(escape(feedback.format_summary(votes)))]
    return {"type": "home", "blocks": blocks}


def register_home(app: AsyncApp, team: TeamControls, default_model: str, prompt: str) -> None:
    @app.event("app_home_opened")
    async def opened(event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("tab") != "home" or not event.get("user"):
            return
        user = str(event["user"])
        try:
            view = await home_view(team, user, default_model, prompt)
            await client.views_publish(user_id=user, view=view)
        except SlackApiError as exc:
            log.warning("slack: could not publish the App Home: %s", exc.response.get("error"))
