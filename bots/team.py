"""Team controls both chat bots share: config in force, permissions, per-channel
model and prompt (set from chat, kept in Redis), quotas and usage.

A bot builds one :class:`TeamControls` with its platform's environment settings
folded in (environment wins where it overlaps the config file), starts
:meth:`TeamControls.watch` so edits of ``corral.yaml`` take effect live, and
asks it before enqueueing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis as AsyncRedis

from shared import feedback, usage
from shared.contract import Usage
from shared.permissions import Actor, Decision, decide, is_admin
from shared.settings import Settings
from shared.team_config import ConfigWatcher, TeamConfig, config_path, fold_env

log = logging.getLogger(__name__)

PREFS_PREFIX = "corral:channel"
SYSTEM_PROMPT_LIMIT = 4000
ADMINS_ONLY = "Only corral admins can change this channel's settings; {view} shows them."
RESET_WORDS = ("default", "reset")  # `system default` goes back to the default prompt


def prefs_key(platform: str, channel: str) -> str:
    return f"{PREFS_PREFIX}:{platform}:{channel}"


class PlatformEnv(Protocol):
    """The CORRAL_DISCORD_* / CORRAL_SLACK_* settings that overlap the config file."""

    @property
    def allowed_channels(self) -> Iterable[Any]: ...
    @property
    def allow_dms(self) -> bool: ...
    @property
    def channel_prompts(self) -> Mapping[Any, str]: ...
    @property
    def model_fields_set(self) -> set[str]: ...


Fold = Callable[[TeamConfig], TeamConfig]


def env_over_file(env: PlatformEnv, workspaces: Iterable[object]) -> Fold:
    """How a platform's settings fold into the config file: where they overlap, env wins.
    ``workspaces``: the platform's allowed guilds / teams."""

    def fold(config: TeamConfig) -> TeamConfig:
        return fold_env(
            config,
            guilds=workspaces,
            channels=env.allowed_channels,
            allow_dms=env.allow_dms if "allow_dms" in env.model_fields_set else None,
            channel_prompts=dict(env.channel_prompts),
        )

    return fold


@dataclass(frozen=True)
class Effective:
    """What a channel's turns use right now, and where each value came from."""

    model: str  # "" = the default model
    model_source: str
    system_prompt: str | None  # None = the worker's default (CORRAL_SYSTEM_PROMPT)
    prompt_source: str


class TeamControls:
    def __init__(
        self,
        platform: str,
        redis: AsyncRedis,
        fold: Fold,
        *,
        watcher: ConfigWatcher | None = None,
        view_command: str = "/settings",
    ) -> None:
        self.platform = platform
        self.view_command = view_command  # how users see the settings, named in refusals
        self.redis = redis
        self.fold = fold
        self.watcher = watcher or ConfigWatcher(config_path())
        self._raw = self.watcher.config
        self._folded = fold(self._raw)
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> TeamConfig:
        """The file's config (reloaded live) with the platform's env folded in."""
        raw = self.watcher.config
        if raw is not self._raw:  # folded once per reload, not on every use
            self._raw, self._folded = raw, self.fold(raw)
        return self._folded

    def watch(self) -> None:
        if self._task is None and self.watcher.path is not None:
            self._task = asyncio.create_task(self.watcher.run(), name="corral-config-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # Permissions

    def decide(self, actor: Actor) -> Decision:
        return decide(actor, self.config.permissions)

    def is_admin(self, user: str) -> bool:
        return is_admin(Actor(self.platform, user), self.config.permissions)

    def refusal_text(self) -> str:
        return self.config.permissions.refusal_message

    async def refusal(self, decision: Decision, user: str) -> str | None:
        """Why this user gets no answer ("" = refused silently), or None to go ahead."""
        if not decision.allowed:
            return self.refusal_text() if decision.notify else ""
        return await self.over_quota(user)

    # Team controls from chat: `settings`, `usage`, `model [NAME]`, `system [TEXT]`

    async def control(
        self, word: str, arg: str, channel: str, user: str, defaults: Settings
    ) -> str:
        """The reply (shown to the asker only) to one team control; the caller checked
        that the user may use the bot here."""
        arg = arg.strip()
        if word == "usage":
            return await self.usage_report(user)
        if word == "settings" or not arg:
            now = await self.effective(channel)
            model = now.model or defaults.display_model_name
            prompt = now.system_prompt or defaults.system_prompt
            names = ", ".join(self.model_names()) or "only the default"
            return (
                f"Model: `{model}` ({now.model_source}); available: {names}\n"
                f"System prompt ({now.prompt_source}): {prompt}"
            )
        if not self.is_admin(user):
            return ADMINS_ONLY.format(view=self.view_command)
        if word == "model":
            models = self.model_names()
            if arg not in models:
                known = ", ".join(models) or "none are configured (models in corral.yaml)"
                return f"Unknown model `{arg}`. Models: {known}"
            await self.set_model(channel, arg)
            return f"This channel now uses `{arg}`."
        if len(arg) > SYSTEM_PROMPT_LIMIT:
            return f"That prompt is too long (at most {SYSTEM_PROMPT_LIMIT} characters)."
        reset = arg.lower() in RESET_WORDS
        await self.set_system_prompt(channel, "" if reset else arg)
        return f"This channel's system prompt is {'back to the default' if reset else 'updated'}."

    # Per-channel model and prompt

    async def set_model(self, channel: str, model: str) -> None:
        await self.redis.hset(prefs_key(self.platform, channel), "model", model)

    async def set_system_prompt(self, channel: str, prompt: str) -> None:
        key = prefs_key(self.platform, channel)
        if prompt:
            await self.redis.hset(key, "system_prompt", prompt)
        else:
            await self.redis.hdel(key, "system_prompt")

    async def effective(self, channel: str) -> Effective:
        config = self.config
        stored = {
            _text(k): _text(v)
            for k, v in (await self.redis.hgetall(prefs_key(self.platform, channel))).items()
        }
        file_channel = config.channels.get(channel)
        model, model_source = config.models.default, "default"
        if file_channel and file_channel.model:
            model, model_source = file_channel.model, "config file"
        if stored.get("model"):
            model, model_source = stored["model"], "set in chat"
        prompt, prompt_source = config.system_prompt, "config file"
        if prompt is None:
            prompt_source = "default"
        if file_channel and file_channel.system_prompt:
            prompt, prompt_source = file_channel.system_prompt, "channel (config)"
        if stored.get("system_prompt"):
            prompt, prompt_source = stored["system_prompt"], "set in chat"
        return Effective(model, model_source, prompt, prompt_source)

    def queue_model(self, model: str) -> str | None:
        """The model a turn names: None for the default one (it uses the plain queue)."""
        default = self.config.models.default
        return None if not model or model == default else model

    def model_names(self) -> list[str]:
        return self.config.models.names()

    # Quotas and usage

    async def over_quota(self, user: str) -> str | None:
        """A refusal text when the user's daily token quota is used up, else None."""
        limit = self.config.limits.daily_tokens_per_user
        if not limit:
            return None
        used = await usage.aused_by(self.redis, self.platform, user)
        if used.total < limit:
            return None
        return (
            f"You've used your daily allowance of {limit:,} tokens "
            f"({used.total:,} so far today). It resets at midnight UTC."
        )

    async def record_usage(self, user: str, channel: str, model: str, spent: Usage) -> None:
        try:
            await usage.arecord(
                self.redis,
                platform=self.platform,
                user=user,
                channel=channel,
                model=model or self.config.models.default or "default",
                prompt_tokens=spent.prompt_tokens,
                completion_tokens=spent.completion_tokens,
            )
        except Exception:  # accounting must never break an answer
            log.warning("could not record usage", exc_info=True)

    async def usage_report(self, user: str) -> str:
        mine = await usage.aused_by(self.redis, self.platform, user)
        limit = self.config.limits.daily_tokens_per_user
        lines = [f"Your usage today: {usage.format_tokens(mine)}"]
        if limit:
            lines[0] += f" of {limit:,} allowed"
        if self.is_admin(user):
            for kind in ("user", "channel", "model"):
                rows = await usage.aread(self.redis, kind)
                if kind != "model":
                    rows = {
                        who.split(":", 1)[1]: t
                        for who, t in rows.items()
                        if who.startswith(f"{self.platform}:")
                    }
                if rows:
                    shown = ", ".join(f"{who}: {t.total:,}" for who, t in rows.items())
                    lines.append(f"Team today by {kind}: {shown}")
            # Whether the answers help: the 👍/👎 people gave them (shared/feedback.py).
            votes = await feedback.summary(self.redis, self.platform)
            lines.append(feedback.format_summary(votes))
        return "\n".join(lines)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def trimmed_notice(dropped: int, reset: str = "/reset") -> str:
    noun = "message" if dropped == 1 else "messages"
    return (
        f"This conversation outgrew my context: I left out the {dropped} oldest {noun}. "
        f"{reset} starts over."
    )
