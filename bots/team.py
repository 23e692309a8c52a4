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
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

from shared import feedback, usage
from shared.permissions import Actor, Decision, decide, is_admin
from shared.team_config import ConfigWatcher, TeamConfig, config_path

log = logging.getLogger(__name__)

PREFS_PREFIX = "corral:channel"
SYSTEM_PROMPT_LIMIT = 4000


def prefs_key(platform: str, channel: str) -> str:
    return f"{PREFS_PREFIX}:{platform}:{channel}"


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
        fold: Callable[[TeamConfig], TeamConfig],
        *,
        watcher: ConfigWatcher | None = None,
    ) -> None:
        self.platform = platform
        self.redis = redis
        self.fold = fold
        self.watcher = watcher or ConfigWatcher(config_path())
        self._task: asyncio.Task[None] | None = None

    @property
    def config(self) -> TeamConfig:
        return self.fold(self.watcher.config)

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
            k.decode(): v.decode()
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

    async def record_usage(self, user: str, channel: str, model: str, event_usage: object) -> None:
        prompt = int(getattr(event_usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(event_usage, "completion_tokens", 0) or 0)
        try:
            await usage.arecord(
                self.redis,
                platform=self.platform,
                user=user,
                channel=channel,
                model=model or self.config.models.default or "default",
                prompt_tokens=prompt,
                completion_tokens=completion,
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


def trimmed_notice(dropped: int, reset: str = "/reset") -> str:
    noun = "message" if dropped == 1 else "messages"
    return (
        f"This conversation outgrew my context: I left out the {dropped} oldest {noun}. "
        f"{reset} starts over."
    )
