"""Per-caller API keys from corral.yaml: each key acts as its user, through the team's
permissions, daily quota and usage records; the shared token still works; keys are
compared by digest and never logged."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import ollama
import openai
import pytest
from redis import Redis
from test_api_fixtures import MODEL, REPLY, FakeWorker, ServerThread, StartApi

from shared import usage

pytest_plugins = ["test_api_fixtures"]

ALICE = "sk-alice-0123456789abcdef"
BOB = "sk-bob-fedcba9876543210"
CAROL = "sk-carol-5555555555555555"
SHARED = "shared-token-for-scripts"
CONFIG = f"""
permissions:
  block:
    users: [bob]
  refusal_message: "Not for you, sorry."
limits:
  daily_tokens_per_user: 30
api:
  keys:
    - name: alice-laptop
      user: alice
      key: {ALICE}
    - name: bob-ci
      user: bob
      sha256: {hashlib.sha256(BOB.encode()).hexdigest()}
    - name: carol
      user: carol
      roles: [eng]
      key: {CAROL}
"""
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture
def keyed_api(start_api: StartApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServerThread:
    path = tmp_path / "corral.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("CORRAL_CONFIG", str(path))
    return start_api(token=SHARED)


def oai(server: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=10)


def test_each_key_acts_as_its_user_within_the_team_rules(
    keyed_api: ServerThread,
    fake_worker: FakeWorker,
    redis_conn: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    reply = oai(keyed_api, ALICE).chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        user="mallory",  # what a caller claims does not override its key
    )
    assert reply.choices[0].message.content == REPLY
    assert fake_worker.turns[-1].user == "alice"
    ollama_client = ollama.Client(host=keyed_api.url, headers={"Authorization": f"Bearer {ALICE}"})
    assert ollama_client.chat(model=MODEL, messages=ASK).message.content == REPLY

    # 18 tokens per fake answer: 36 used of 30 allowed, so the third is refused.
    with pytest.raises(openai.RateLimitError, match="daily allowance of 30 tokens"):
        oai(keyed_api, ALICE).chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    by_user = usage.read(redis_conn, "user")
    assert by_user["api:alice"].total == 36
    assert usage.read(redis_conn, "model")[MODEL].total == 36

    with pytest.raises(openai.PermissionDeniedError, match=r"Not for you, sorry\."):
        oai(keyed_api, BOB).chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=keyed_api.url, headers={"Authorization": f"Bearer {BOB}"}).chat(
            model=MODEL, messages=ASK
        )
    assert refused.value.status_code == 403

    # Roles come with the key; other users are untouched by alice's quota.
    oai(keyed_api, CAROL).completions.create(model=MODEL, prompt="x")
    assert fake_worker.turns[-1].user == "carol"
    # The shared token is the one-key case: user "api", no per-user rules.
    oai(keyed_api, SHARED).chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    assert fake_worker.turns[-1].user == "api"

    for wrong in ("x", ALICE[:-1], ALICE + "x", hashlib.sha256(BOB.encode()).hexdigest()):
        with pytest.raises(openai.AuthenticationError):
            oai(keyed_api, wrong).models.list()
    logged = caplog.text
    for secret in (ALICE, BOB, CAROL, SHARED):
        assert secret not in logged
    assert "bob-ci" in logged  # refusals name the key, not the secret


def test_keys_in_the_file_are_validated() -> None:
    from shared.team_config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"api.keys\[0\]: give exactly one of key and sha256"):
        parse_config("api:\n  keys:\n    - {name: a, user: u}\n")
    with pytest.raises(ConfigError, match=r"api.keys\[0\].key"):
        parse_config("api:\n  keys:\n    - {name: a, user: u, key: short}\n")
    two = (
        f"api:\n  keys:\n    - {{name: a, user: u, key: {ALICE}}}\n"
        f"    - {{name: b, user: v, key: {ALICE}}}\n"
    )
    with pytest.raises(ConfigError, match="two entries have the same key") as raised:
        parse_config(two)
    assert ALICE not in str(raised.value)
