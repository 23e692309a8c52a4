"""Discord-only settings, read from ``CORRAL_DISCORD_*`` variables.

The token itself is shared configuration (``DISCORD_TOKEN`` in
:class:`shared.settings.Settings`); what lives here only matters to this bot:
where it may answer, per-channel system prompts, and pacing.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.settings import SettingsError

IdSet = Annotated[frozenset[int], NoDecode]


class DiscordSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_DISCORD_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # Empty means "everywhere the bot has been invited to".
    allowed_guilds: IdSet = frozenset()
    allowed_channels: IdSet = frozenset()  # a thread counts as its parent channel
    allow_dms: bool = True
    # {channel id: system prompt}; threads use their parent channel's prompt.
    channel_prompts: dict[int, str] = Field(default_factory=dict)
    # Seconds between edits of the streaming reply (Discord allows ~5 edits / 5 s).
    edit_interval: float = Field(default=1.0, ge=0.05, le=10.0)
    # Publish /ask, /reset and /status at start. Global commands take a while to
    # appear and the sync call is rate-limited, so a deployment can turn it off.
    sync_commands: bool = True

    @field_validator("allowed_guilds", "allowed_channels", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value


def load_discord_settings(**overrides: Any) -> DiscordSettings:
    """Read the settings, turning a validation failure into one readable line."""
    try:
        return DiscordSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc", ())
        field = str(loc[0]) if loc else "?"
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting CORRAL_DISCORD_{field.upper()}: {message}") from None
