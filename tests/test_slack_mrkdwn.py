"""Markdown -> Slack mrkdwn, Slack text cleaning and Slack settings."""

from __future__ import annotations

import pytest

from bots.slack.mrkdwn import RULE_TEXT, slack_to_plain, to_mrkdwn
from bots.slack.settings import SlackSettings, load_slack_settings
from bots.slack.surface import to_message
from bots.team import env_over_file
from shared.permissions import Actor, decide
from shared.settings import SettingsError
from shared.team_config import TeamConfig


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("***both***", "*_both_*"),
        ("~~gone~~", "~gone~"),
        ("[docs](https://x.io/a_b?q=1&r=2)", "<https://x.io/a_b?q=1&amp;r=2|docs>"),
        ("![logo](https://x.io/l.png)", "<https://x.io/l.png|logo>"),
        ("see <https://x.io>", "see <https://x.io>"),
        ("# Title", "*Title*"),
        ("### A **bold** heading ###", "*A bold heading*"),
        ("- one\n* two\n  + nested", "• one\n• two\n  • nested"),
        ("> quoted **text**", "> quoted *text*"),
        ("---", RULE_TEXT),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("`a**b**c` stays", "`a**b**c` stays"),
        ("5 * 3 * 2 and snake_case_name", "5 * 3 * 2 and snake_case_name"),
        ("plain text", "plain text"),
    ],
)
def test_inline_and_line_rules(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_code_blocks_are_kept_verbatim_but_escaped() -> None:
    markdown = '```python\nif a < b and x**2:\n    print("**no** [x](y)")\n```\nafter **it**'
    assert to_mrkdwn(markdown) == (
        '```\nif a &lt; b and x**2:\n    print("**no** [x](y)")\n```\nafter *it*'
    )


def test_streaming_text_with_an_open_fence_is_closed() -> None:
    assert to_mrkdwn("Look:\n```\nx = 1") == "Look:\n```\nx = 1\n```"
    # Half-written emphasis is left alone rather than guessed.
    assert to_mrkdwn("so **bo") == "so **bo"


def test_slack_text_for_the_model() -> None:
    text = "<@UBOT> see <https://a.io|the docs> in <#C1|general> &lt;now&gt; <!here>"
    assert slack_to_plain(text, "UBOT") == "see the docs (https://a.io) in #general <now> @here"


def test_history_roles() -> None:
    ours = {"user": "UBOT", "bot_id": "B1", "text": "An answer &amp; more"}
    theirs = {"user": "U1", "text": "<@UBOT> question"}
    ask = {"user": "UBOT", "text": "<@U1> asked: q", "metadata": {
        "event_type": "corral_ask", "event_payload": {"question": "q?"}}}  # fmt: skip
    placeholder = {"user": "UBOT", "text": "_thinking…_"}
    other_bot = {"bot_id": "B9", "text": "beep"}
    assert to_message(ours, "UBOT", "B1").content == "An answer & more"  # type: ignore[union-attr]
    assert to_message(theirs, "UBOT", "B1").role == "user"  # type: ignore[union-attr]
    assert to_message(ask, "UBOT", "B1").content == "q?"  # type: ignore[union-attr]
    assert to_message(placeholder, "UBOT", "B1") is None
    assert to_message(other_bot, "UBOT", "B1") is None


def test_slack_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_SLACK_ALLOWED_TEAMS", "T1, T2")
    monkeypatch.setenv("CORRAL_SLACK_ALLOWED_CHANNELS", '["C1"]')
    monkeypatch.setenv("CORRAL_SLACK_CHANNEL_PROMPTS", '{"C1": "Be terse."}')
    monkeypatch.setenv("CORRAL_SLACK_MODE", "http")
    s = load_slack_settings(_env_file=None)
    assert s.allowed_teams == {"T1", "T2"} and s.allowed_channels == {"C1"}
    assert s.channel_prompts == {"C1": "Be terse."} and s.mode == "http"
    assert channel_allowed(s, "T1", "C1", is_dm=False)
    assert not channel_allowed(s, "T1", "C2", is_dm=False)
    assert not channel_allowed(s, "T3", "C1", is_dm=False)
    assert channel_allowed(s, "T2", "D5", is_dm=True)
    for name in ("ALLOWED_TEAMS", "ALLOWED_CHANNELS"):
        monkeypatch.delenv(f"CORRAL_SLACK_{name}")
    open_to_all = SlackSettings(_env_file=None)  # type: ignore[call-arg]
    assert channel_allowed(open_to_all, "TX", "CX", is_dm=False)


def channel_allowed(s: SlackSettings, workspace: str, channel: str, is_dm: bool) -> bool:
    """Is the bot switched on there, by these settings folded into an empty corral.yaml?"""
    permissions = env_over_file(s, s.allowed_teams)(TeamConfig()).permissions
    return decide(Actor("slack", "U1", workspace, channel, is_dm=is_dm), permissions).allowed


def test_bad_slack_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_SLACK_MODE", "carrier-pigeon")
    with pytest.raises(SettingsError, match="CORRAL_SLACK_MODE"):
        load_slack_settings(_env_file=None)
