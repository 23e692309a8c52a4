"""Every environment variable corral reads, from the settings classes and the sources.

Used by the docs tests (README table, .env.example) and the CLI help test, so a new
setting that nobody documents fails a test instead of staying a secret.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from bots.api.settings import ApiSettings
from bots.discord.settings import DiscordSettings
from bots.slack.settings import SlackSettings
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CODE = ("shared", "bots", "worker", "corral")


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The documented (first) variable name of each field of a settings class."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for field, info in cls.model_fields.items():
        alias = info.validation_alias
        names.add(str(alias.choices[0]) if isinstance(alias, AliasChoices) else prefix + field)
    return {name.upper() for name in names}


def settings_by_area() -> dict[str, set[str]]:
    """Variables grouped by the doc that owns them (platform knobs in their own guides)."""
    return {
        "shared": env_names(Settings),
        "api": env_names(ApiSettings),
        "discord": env_names(DiscordSettings),
        "slack": env_names(SlackSettings),
    }


def named_in_code() -> set[str]:
    """``CORRAL_*`` names spelled out in the sources (e.g. read with os.environ)."""
    found: set[str] = set()
    for package in CODE:
        for path in (ROOT / package).rglob("*.py"):
            found |= set(re.findall(r"\bCORRAL_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return found


def every_setting() -> set[str]:
    return set().union(*settings_by_area().values())
