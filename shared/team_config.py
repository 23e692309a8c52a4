"""The team configuration file (``corral.yaml``, path from ``CORRAL_CONFIG``).

One YAML file for what a team lead wants to control: which models exist, per-channel
model and system prompt, who may use the bot, and limits. It is validated at start
(a bad key fails with one line such as ``corral.yaml: permissions.admins[2]: …``) and
the bots re-read it when it changes (:class:`ConfigWatcher`); a broken edit is logged
and rejected, and the last good configuration stays in force.

Environment variables still win where they overlap (the ``CORRAL_DISCORD_*`` /
``CORRAL_SLACK_*`` allow-lists and channel prompts): see :func:`fold_env`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from shared.settings import SettingsError

log = logging.getLogger(__name__)

CONFIG_ENV = "CORRAL_CONFIG"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEFAULT_REFUSAL = "Sorry, you're not allowed to use corral here."


def _to_id(value: Any) -> Any:
    # Discord ids written unquoted in YAML arrive as ints; ids are strings everywhere else.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_to_id), Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Other names a served model answers to in the HTTP API (e.g. "llama3:instruct", as the
# Ollama guide's examples call it): colons and slashes allowed, unlike queue names.
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
Alias = Annotated[str, Field(pattern=ALIAS_PATTERN)]


class ModelEntry(_Strict):
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    description: str = ""
    aliases: list[Alias] = Field(default_factory=list)


class Models(_Strict):
    # The model turns go to when a channel names none (served from the plain queue).
    default: str = ""
    available: list[ModelEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _default_is_listed(self) -> Models:
        names = [m.name for m in self.available]
        if self.default and names and self.default not in names:
            raise ValueError(f"default {self.default!r} is not one of available: {names}")
        seen: dict[str, str] = {}
        for entry in self.available:
            for alias in entry.aliases:
                if alias in names or alias in seen:
                    other = seen.get(alias, alias)
                    raise ValueError(f"alias {alias!r} of {entry.name!r} already names {other!r}")
                seen[alias] = entry.name
        return self

    def aliases(self) -> dict[str, str]:
        """alias -> the model name it stands for."""
        return {alias: m.name for m in self.available for alias in m.aliases}

    def names(self) -> list[str]:
        names = [m.name for m in self.available]
        if self.default and self.default not in names:
            names.insert(0, self.default)
        return names


class ChannelConfig(_Strict):
    model: str | None = Field(None, pattern=MODEL_NAME_PATTERN)
    system_prompt: str | None = None


class Rules(_Strict):
    users: list[Id] = Field(default_factory=list)
    roles: list[Id] = Field(default_factory=list)  # Discord role ids / Slack user group ids
    channels: list[Id] = Field(default_factory=list)  # a thread counts as its channel
    guilds: list[Id] = Field(default_factory=list)  # Discord servers / Slack workspaces


class Permissions(_Strict):
    admins: list[Id] = Field(default_factory=list)
    allow: Rules = Field(default_factory=Rules)  # empty list = no restriction
    block: Rules = Field(default_factory=Rules)
    allow_dms: bool = True
    # notice: one short private line to a refused user; silent: ignore them.
    on_refusal: Literal["notice", "silent"] = "notice"
    refusal_message: str = Field(DEFAULT_REFUSAL, min_length=1, max_length=500)


class Limits(_Strict):
    daily_tokens_per_user: int = Field(0, ge=0)  # prompt + completion; 0 = no quota
    attachment_max_bytes: int = Field(100_000, ge=1, le=10_000_000)
    attachments_max: int = Field(5, ge=0, le=50)
    image_max_bytes: int = Field(5_000_000, ge=1, le=50_000_000)  # per image (vision models)


class SuggestedPrompt(_Strict):
    title: str = Field(min_length=1, max_length=75)  # the button's label
    message: str = Field(min_length=1, max_length=2000)  # what clicking it sends


DEFAULT_PROMPTS = (
    SuggestedPrompt(title="Explain a concept", message="Explain how DNS resolution works."),
    SuggestedPrompt(
        title="Draft a message", message="Help me write a short status update for my team."
    ),
    SuggestedPrompt(title="Review code", message="Review this code for bugs:"),
)


class Assistant(_Strict):
    """Slack's assistant pane: what a new assistant thread offers to ask."""

    title: str = Field("Try asking", max_length=150)
    suggested_prompts: list[SuggestedPrompt] = Field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        max_length=4,  # Slack shows at most 4
    )


class ApiKey(_Strict):
    """One caller of the HTTP API: its key and who it acts as (permissions, quotas, usage).

    Give the key itself (``key``) or, better, only its SHA-256 (``sha256``, hex), so the
    file does not hold the secret. Keys are never logged; ``name`` is what logs show.
    """

    name: str = Field(min_length=1, max_length=64)
    user: Id
    roles: list[Id] = Field(default_factory=list)
    key: str | None = Field(None, min_length=16)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of key and sha256")
        return self

    def digest(self) -> bytes:
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        return hashlib.sha256((self.key or "").encode()).digest()


class ApiConfig(_Strict):
    keys: list[ApiKey] = Field(default_factory=list)

    @model_validator(mode="after")
    def _distinct(self) -> ApiConfig:
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("two keys have the same name")
        if len({k.digest() for k in self.keys}) != len(self.keys):
            raise ValueError("two entries have the same key")
        return self


class TeamConfig(_Strict):
    system_prompt: str | None = None  # default for every channel (else CORRAL_SYSTEM_PROMPT)
    models: Models = Field(default_factory=Models)
    channels: dict[Id, ChannelConfig] = Field(default_factory=dict)
    permissions: Permissions = Field(default_factory=Permissions)
    limits: Limits = Field(default_factory=Limits)
    assistant: Assistant = Assistant(title="Try asking")  # frozen: one shared default is safe
    api: ApiConfig = Field(default_factory=ApiConfig)  # per-caller keys of `corral api`

    @model_validator(mode="after")
    def _channel_models_exist(self) -> TeamConfig:
        known = self.models.names()
        for channel, conf in self.channels.items():
            if conf.model and known and conf.model not in known:
                raise ValueError(f"channels.{channel}.model {conf.model!r} is not in models")
        return self


class ConfigError(SettingsError):
    """The config file is unreadable or invalid; the message names the key."""


def _where(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def parse_config(text: str, name: str = "corral.yaml") -> TeamConfig:
    """Validate YAML text; raises :class:`ConfigError` with one line naming the bad key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{name}: {problem}{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the top level must be a mapping of keys")
    try:
        return TeamConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _where(first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return_prefix = f"{name}: {where}: " if where else f"{name}: "
        raise ConfigError(return_prefix + message) from None


def load_config_file(path: str | Path) -> TeamConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot read {path}: {exc.strerror or exc}") from None
    return parse_config(text, path.name)


def config_path() -> Path | None:
    value = os.environ.get(CONFIG_ENV, "").strip()
    return Path(value).expanduser() if value else None


def load_team_config(path: str | Path | None = None) -> TeamConfig:
    """The file named by ``CORRAL_CONFIG`` (or ``path``); defaults when neither is set."""
    path = path if path is not None else config_path()
    return load_config_file(path) if path else TeamConfig()


def fold_env(
    config: TeamConfig,
    *,
    guilds: Iterable[object] = (),
    channels: Iterable[object] = (),
    allow_dms: bool | None = None,
    channel_prompts: dict[Any, str] | None = None,
) -> TeamConfig:
    """The config with one platform's environment settings laid over it (env wins).

    The lists are per platform in the environment but shared in the file; ids of the
    two platforms never collide, so replacing a list only matters to that platform.
    """
    allow = config.permissions.allow
    guild_ids = [str(g) for g in guilds]
    channel_ids = [str(c) for c in channels]
    if guild_ids:
        allow = allow.model_copy(update={"guilds": guild_ids})
    if channel_ids:
        allow = allow.model_copy(update={"channels": channel_ids})
    perms_update: dict[str, Any] = {"allow": allow}
    if allow_dms is not None:
        perms_update["allow_dms"] = allow_dms
    update: dict[str, Any] = {"permissions": config.permissions.model_copy(update=perms_update)}
    if channel_prompts:
        merged = dict(config.channels)
        for channel, prompt in channel_prompts.items():
            base = merged.get(str(channel), ChannelConfig())
            merged[str(channel)] = base.model_copy(update={"system_prompt": prompt})
        update["channels"] = merged
    return config.model_copy(update=update)


class ConfigWatcher:
    """Holds the config in force and re-reads the file when it changes.

    ``poll()`` checks the file's mtime and size once; ``run()`` polls every
    ``interval`` seconds. A file that fails to load is logged with its reason
    and the previous configuration stays in force.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        interval: float = 2.0,
        initial: TeamConfig | None = None,
    ) -> None:
        self.path = Path(path) if path else None
        self.interval = interval
        self.config = initial if initial is not None else load_team_config(self.path)
        self.last_error = ""
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def poll(self) -> bool:
        """Reload if the file changed; True when a new config took effect."""
        stamp = self._read_stamp()
        if self.path is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_config_file(self.path)
        except ConfigError as exc:
            self.last_error = str(exc)
            log.warning("config reload rejected, keeping the previous config: %s", exc)
            return False
        self.last_error = ""
        self.config = config
        log.info("config reloaded from %s", self.path)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.poll()
            except Exception:  # never let a reload problem stop the bot
                log.exception("config reload failed")
