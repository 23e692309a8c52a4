"""Slack-only settings (``CORRAL_SLACK_*``), kept apart from the shared Settings.

Tokens and the signing secret stay in :class:`shared.settings.Settings`
(``SLACK_BOT_TOKEN``, ``SLACK_APP_TOKEN``, ``SLACK_SIGNING_SECRET``); this class
only holds the knobs that make sense for the Slack bot alone.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.settings import SettingsError


def _id_set(value: Any) -> Any:
    """Accept ``T1,T2``, ``T1 T2`` or a JSON list, so env files stay readable."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in text.replace(",", " ").split() if part]
    return value


class SlackSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_SLACK_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # auto: Socket Mode when SLACK_APP_TOKEN is set, else HTTP (Events API).
    mode: Literal["auto", "socket", "http"] = "auto"
    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=1, le=65535)
    path: str = "/slack/events"

    # Empty means "everywhere the app is installed / invited".
    allowed_teams: Annotated[frozenset[str], NoDecode] = frozenset()
    allowed_channels: Annotated[frozenset[str], NoDecode] = frozenset()
    allow_dms: bool = True
    # {"C0123": "You are the on-call helper…"}: overrides the default system prompt.
    channel_prompts: dict[str, str] = Field(default_factory=dict)

    # Slack allows ~1 chat.update per second per message before it answers 429.
    update_interval: float = Field(default=1.0, ge=0.1, le=30.0)
    # Slack truncates long texts; stay well under its 4,000-char guidance.
    max_message_chars: int = Field(default=3500, ge=200, le=3900)
    # How long a delivered event / message id is remembered to drop retries.
    dedup_ttl: int = Field(default=24 * 3600, ge=60)
    # Messages fetched from conversations.replies when the store lost a thread.
    history_limit: int = Field(default=50, ge=1, le=1000)
    # Slack's native streaming (chat.startStream/appendStream/stopStream): "auto" uses it
    # in the assistant pane, "on" for every threaded answer, "off" never. Wherever Slack
    # refuses it, the answer falls back to chat.update edits.
    native_streaming: Literal["auto", "on", "off"] = "auto"
    # Seconds between two chat.appendStream calls of one answer (text is batched between).
    stream_interval: float = Field(default=0.5, ge=0.05, le=10.0)

    @field_validator("allowed_teams", "allowed_channels", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        return _id_set(value)


def load_slack_settings(**overrides: Any) -> SlackSettings:
    """Read Slack settings; a bad value fails with one line naming the variable."""
    try:
        return SlackSettings(**overrides)
    except (ValidationError, json.JSONDecodeError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise SettingsError(f"invalid Slack setting: {exc.msg}") from None
        first = exc.errors()[0]
        field = str(first.get("loc", ("?",))[0])
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting CORRAL_SLACK_{field.upper()}: {message}") from None
