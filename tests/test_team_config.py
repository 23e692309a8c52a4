"""corral.yaml validation, `corral config check`, the permission function, usage accounting
(and its /metrics export), and per-model queue routing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from test_api_fixtures import ServerThread

from shared import usage
from shared.contract import Turn
from shared.permissions import Actor, decide
from shared.settings import Settings
from shared.team_config import ConfigError, ConfigWatcher, Permissions, fold_env, parse_config
from shared.turnqueue import enqueue_turn, serving_queues

pytest_plugins = ["test_api_fixtures"]
ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = """
system_prompt: You help the platform team.
models:
  default: llama3-8b
  available:
    - {name: llama3-8b}
    - {name: llama3-70b, description: 'slower, smarter'}
channels:
  "123456789012345678": {model: llama3-70b, system_prompt: Be brief.}
  C0123ABC: {system_prompt: You help the on-call engineer.}
permissions:
  admins: [111111111111111111, U0ADMIN]
  allow: {roles: [222222222222222222, S0DEVS], guilds: [T0TEAM]}
  block: {users: [U0SPAM]}
  allow_dms: false
  on_refusal: notice
limits: {daily_tokens_per_user: 200000, attachment_max_bytes: 50000}
"""


def test_a_full_config_parses_and_ids_become_strings() -> None:
    config = parse_config(EXAMPLE)
    assert config.permissions.admins == ["111111111111111111", "U0ADMIN"]
    assert config.models.names() == ["llama3-8b", "llama3-70b"]
    assert config.channels["123456789012345678"].model == "llama3-70b"
    assert config.limits.daily_tokens_per_user == 200000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("permissions:\n  admins: [1, 2, [3]]\n", "corral.yaml: permissions.admins[2]: "),
        ("permisions: {}\n", "corral.yaml: permisions: Extra inputs are not permitted"),
        ("limits: {daily_tokens_per_user: -1}\n", "corral.yaml: limits.daily_tokens_per_user: "),
        ("permissions: {on_refusal: shout}\n", "corral.yaml: permissions.on_refusal: "),
        ("models: {default: x, available: [{name: y}]}\n", "corral.yaml: models: default 'x'"),
        ("channels: {C1: {model: nope}}\nmodels: {available: [{name: a}]}\n", "channels.C1.model"),
        ("models: {available: [{name: 'a b'}]}\n", "corral.yaml: models.available[0].name: "),
        ("- just\n- a list\n", "corral.yaml: the top level must be a mapping"),
        ("permissions: [unclosed\n", "corral.yaml: expected ',' or ']'"),
    ],
)
def test_a_bad_config_fails_with_one_line_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert str(caught.value).startswith(message) or message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_config_check_command(tmp_path: Path) -> None:
    good, bad = tmp_path / "corral.yaml", tmp_path / "broken.yaml"
    good.write_text(EXAMPLE)
    bad.write_text("permissions:\n  admins: [1, 2, [3]]\n")
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_CONFIG"}

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "corral.cli", "config", "check", str(path)]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)

    ok = check(good)
    assert ok.returncode == 0 and "ok (2 model(s), 2 channel(s))" in ok.stdout
    failed = check(bad)
    assert failed.returncode == 2
    assert failed.stderr.strip() == "corral: broken.yaml: permissions.admins[2]: " + (
        "Input should be a valid string"
    )
    missing = check(tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_watcher_keeps_the_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "corral.yaml"
    path.write_text("limits: {daily_tokens_per_user: 5}\n")
    watcher = ConfigWatcher(path)
    assert not watcher.poll()  # unchanged
    path.write_text("limits: {daily_tokens_per_user: nope}\n")
    assert not watcher.poll()
    assert "limits.daily_tokens_per_user" in watcher.last_error
    assert watcher.config.limits.daily_tokens_per_user == 5
    path.write_text("limits: {daily_tokens_per_user: 7}\n")
    assert watcher.poll() and watcher.config.limits.daily_tokens_per_user == 7
    assert watcher.last_error == ""


def test_env_settings_override_the_file() -> None:
    config = parse_config(EXAMPLE)
    folded = fold_env(
        config, guilds=[42], channels=["9"], allow_dms=True, channel_prompts={9: "Hi"}
    )
    assert folded.permissions.allow.guilds == ["42"]
    assert folded.permissions.allow.channels == ["9"]
    assert folded.permissions.allow.roles == config.permissions.allow.roles
    assert folded.permissions.allow_dms is True
    assert folded.channels["9"].system_prompt == "Hi"
    assert fold_env(config).permissions == config.permissions  # nothing set: the file as is


R1 = frozenset({"r1"})


def perms(**values: object) -> Permissions:
    return Permissions.model_validate(values)


@pytest.mark.parametrize(
    ("rules", "actor", "allowed", "scope"),
    [
        ({}, Actor("discord", "u1", "g1", "c1"), True, ""),
        ({"block": {"users": ["u1"]}}, Actor("slack", "u1", "T1", "C1"), False, "user"),
        ({"block": {"roles": ["r1"]}}, Actor("discord", "u1", "g", "c", R1), False, "user"),
        ({"allow": {"users": ["u2"]}}, Actor("discord", "u1", "g", "c"), False, "user"),
        ({"allow": {"roles": ["r1"]}}, Actor("discord", "u1", "g", "c", R1), True, ""),
        ({"allow": {"channels": ["c2"]}}, Actor("discord", "u1", "g", "c1"), False, "place"),
        ({"block": {"channels": ["c1"]}}, Actor("discord", "u1", "g", "c1"), False, "place"),
        ({"allow": {"guilds": ["g2"]}}, Actor("discord", "u1", "g1", "c1"), False, "place"),
        ({"block": {"guilds": ["T1"]}}, Actor("slack", "u1", "T1", "C1"), False, "place"),
        ({"allow_dms": False}, Actor("slack", "u1", "T1", "D1", is_dm=True), False, "place"),
        ({"allow": {"channels": ["c2"]}}, Actor("slack", "u1", "T1", "D1", is_dm=True), True, ""),
        ({"admins": ["u1"], "allow": {"users": ["u2"]}}, Actor("slack", "u1", "T", "C"), True, ""),
        ({"admins": ["u1"], "block": {"users": ["u1"]}}, Actor("slack", "u1", "T", "C"), True, ""),
        ({"admins": ["u1"], "allow": {"channels": ["C2"]}}, Actor("slack", "u1"), False, "place"),
    ],
)  # fmt: skip
def test_permission_matrix(rules: dict, actor: Actor, allowed: bool, scope: str) -> None:
    decision = decide(actor, perms(**rules))
    assert (decision.allowed, decision.scope) == (allowed, scope), decision.reason
    assert decision.reason
    assert decision.notify == (scope == "user")


def test_silent_refusal_does_not_notify() -> None:
    decision = decide(Actor("slack", "u1"), perms(on_refusal="silent", block={"users": ["u1"]}))
    assert not decision.allowed and not decision.notify


def test_usage_is_counted_per_user_channel_model_and_exported(
    redis_url: str, redis_conn: Redis, api: ServerThread
) -> None:
    async def record_two_turns() -> None:
        conn = AsyncRedis.from_url(redis_url)
        for prompt, completion in ((10, 5), (7, 3)):
            await usage.arecord(
                conn, platform="slack", user="U1", channel="C1", model="big",
                prompt_tokens=prompt, completion_tokens=completion,
            )  # fmt: skip
        await conn.aclose()

    asyncio.run(record_two_turns())
    assert usage.read(redis_conn, "user") == {"slack:U1": usage.Tokens(17, 8)}
    assert usage.read(redis_conn, "channel") == {"slack:C1": usage.Tokens(17, 8)}
    assert usage.read(redis_conn, "model") == {"big": usage.Tokens(17, 8)}
    assert redis_conn.ttl(usage.key(usage.today(), "user")) > 80 * 24 * 3600
    assert usage.read(redis_conn, "user", day="2000-01-01") == {}

    with urllib.request.urlopen(f"{api.url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    assert "# TYPE corral_usage_tokens_today gauge" in lines
    assert 'corral_usage_tokens_today{scope="user",name="slack:U1",type="prompt"} 17' in lines
    assert 'corral_usage_tokens_today{scope="model",name="big",type="completion"} 8' in lines


def test_turns_naming_a_model_go_to_its_queue(settings: Settings, redis_conn: Redis) -> None:
    def turn(channel: str, model: str | None) -> Turn:
        return Turn(
            platform="slack", channel=channel, user="U", message_id="1", text="hi", model=model
        )

    enqueue_turn(redis_conn, settings, turn("C1", None))
    enqueue_turn(redis_conn, settings, turn("C2", "big"))
    assert Queue("corral-test", connection=redis_conn).count == 1
    assert Queue("corral-test:big", connection=redis_conn).count == 1

    big = settings.model_copy(update={"model_name": "big"})
    assert [q.name for q in serving_queues(redis_conn, big, is_default=False)] == [
        "corral-test:big"
    ]
    small = settings.model_copy(update={"model_name": "small"})
    # The default model's worker consumes only the plain queue (one queue: BLMOVE).
    assert [q.name for q in serving_queues(redis_conn, small, is_default=True)] == ["corral-test"]
