"""The docs tell the truth about settings, commands and status (issue 16).

Every setting the code reads is in the README's table and in .env.example; platform
settings are also in their guides; docs/discord.md names every slash command the bot
registers; the /healthz example has the keys the server sends.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import discord
import pytest
from discord import app_commands
from setting_names import env_names, every_setting, named_in_code, settings_by_area
from test_api_fixtures import ServerThread

from bots.discord.commands import register_commands
from bots.discord.feedback import register_feedback
from shared.settings import Settings

pytest_plugins = ["test_api_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Second spellings the settings also accept (CORRAL_REDIS_URL for REDIS_URL): documented
# through the first one.
ALTERNATES = {"CORRAL_REDIS_URL", "CORRAL_HF_TOKEN"}
COMPOSE_ONLY = {"CORRAL_API_PUBLISH"}  # read by docker-compose.yml, not by Python


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end > 0 else None]


def table_names(text: str) -> set[str]:
    """Variable names in the first column of the Markdown tables in ``text``."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("|"):
            first = line.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first))
    return names


def code_settings() -> set[str]:
    return (every_setting() | named_in_code()) - ALTERNATES


def test_the_enumeration_sees_the_settings() -> None:
    names = code_settings()
    assert {"REDIS_URL", "HF_TOKEN", "CORRAL_MODEL_NAME", "CORRAL_CONFIG"} <= names
    assert {"CORRAL_API_TOKEN", "CORRAL_DISCORD_SYNC_COMMANDS", "CORRAL_SLACK_MODE"} <= names
    assert "CORRAL_SYSTEM_PROMPT" in env_names(Settings)


def test_every_setting_is_in_the_readme_table() -> None:
    table = table_names(section(README, "## Configuration"))
    missing = sorted(code_settings() - table)
    assert not missing, f"add to the README's settings table: {missing}"
    assert not table - code_settings() - COMPOSE_ONLY - {"BRAVE_API_KEY", "WOLFRAM_ALPHA_APP_ID"}


def test_every_setting_is_in_the_env_example_commented() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#([A-Z][A-Z0-9_]+)=", text, re.M))
    assert not re.findall(r"^[A-Z][A-Z0-9_]+=", text, re.M)  # all commented: defaults stand
    missing = sorted(code_settings() - listed)
    assert not missing, f"add to .env.example: {missing}"
    assert not listed - code_settings() - COMPOSE_ONLY - {"BRAVE_API_KEY", "WOLFRAM_ALPHA_APP_ID"}


@pytest.mark.parametrize("area", ["api", "discord", "slack"])
def test_platform_settings_are_in_their_guides(area: str) -> None:
    guide = table_names((ROOT / "docs" / f"{area}.md").read_text())
    missing = sorted(settings_by_area()[area] - guide - {"CORRAL_API"})
    assert not missing, f"add to docs/{area}.md: {missing}"


def test_discord_doc_names_every_synced_command() -> None:
    client = discord.Client(intents=discord.Intents.none())
    tree = app_commands.CommandTree(client)
    register_commands(tree, bot=None)  # type: ignore[arg-type]
    register_feedback(tree, client, team=None)  # type: ignore[arg-type]  # /feedback
    registered = {command.name for command in tree.get_commands()}
    assert len(registered) >= 8
    line = next(
        ln for ln in (ROOT / "docs/discord.md").read_text().splitlines() if "SYNC_COMMANDS" in ln
    )
    assert f"{len(registered)} slash commands" in line
    assert set(re.findall(r"`/(\w+)`", line)) == registered


def test_healthz_example_has_the_keys_the_server_sends(api: ServerThread) -> None:
    import urllib.request

    doc = (ROOT / "docs/api.md").read_text()
    example = re.search(r"curl \S+/healthz\s+# (\{.*\})", doc)
    assert example, "docs/api.md has no /healthz example"
    with urllib.request.urlopen(f"{api.url}/healthz", timeout=10) as response:
        sent = json.loads(response.read())
    assert set(json.loads(example[1])) == set(sent)


def test_newcomers_learn_the_default_model_is_a_toy_and_how_to_switch() -> None:
    start = section(README, "## Quick start")
    assert "135M" in start and "toy" in start
    assert "CORRAL_MODEL=meta-llama/Meta-Llama-3-8B-Instruct" in start and "HF_TOKEN=" in start


def test_the_service_docs_exist_and_are_linked() -> None:
    assert "deploy/README.md" in README
    guide = (ROOT / "deploy" / "README.md").read_text()
    assert "systemctl" in guide and "SIGTERM" in guide
    for unit in re.findall(r"deploy/([\w@-]+\.service)", guide):
        assert (ROOT / "deploy" / unit).is_file(), unit


def test_packaged_examples_match_the_docs() -> None:
    team = (ROOT / "docs" / "team.md").read_text()
    block = re.search(r"## Example\n\n```yaml\n(.*?)```", team, re.S)
    assert block and block[1] == (ROOT / "corral/examples/corral.yaml").read_text()
    assert (ROOT / ".env.example").resolve() == (ROOT / "corral/examples/env.example").resolve()


def test_env_example_values_are_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Uncommenting a line of .env.example changes nothing: what it shows is the default."""
    from bots.api.settings import ApiSettings
    from bots.discord.settings import DiscordSettings
    from bots.slack.settings import SlackSettings

    monkeypatch.chdir(tmp_path)  # no developer .env
    for name in code_settings() | {"REDIS_URL", "HF_TOKEN"} | ALTERNATES:
        monkeypatch.delenv(name, raising=False)
    classes = (Settings, ApiSettings, DiscordSettings, SlackSettings)
    defaults = [cls().model_dump() for cls in classes]  # type: ignore[call-arg]
    text = (ROOT / ".env.example").read_text()
    shown = dict(re.findall(r"^#([A-Z][A-Z0-9_]+)=(.*)$", text, re.M))
    assert len(shown) > 60
    for name, value in shown.items():
        if value and name not in COMPOSE_ONLY:
            monkeypatch.setenv(name, value)
    assert [cls().model_dump() for cls in classes] == defaults  # type: ignore[call-arg]
