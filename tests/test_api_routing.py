"""``model`` routing: served names and corral.yaml aliases reach their model's workers;
anything else is a 404 in the route's dialect that lists what is served."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest
from redis import Redis
from test_api_fixtures import MODEL, REPLY, FakeWorker, StartApi, running_fake_worker

from shared.settings import Settings

pytest_plugins = ["test_api_fixtures"]

OTHER = "llama3-8b-instruct"
CONFIG = f"""
models:
  default: {MODEL}
  available:
    - name: {MODEL}
    - name: {OTHER}
      aliases: ["llama3", "llama3:instruct", "meta-llama/Meta-Llama-3-8B-Instruct"]
    - name: not-running
      aliases: ["ghost"]
"""


@pytest.fixture
def two_models(
    settings: Settings, redis_conn: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeWorker, FakeWorker]]:
    path = tmp_path / "corral.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv("CORRAL_CONFIG", str(path))
    with (
        running_fake_worker(settings, redis_conn) as small,
        running_fake_worker(settings, redis_conn, OTHER, default=False) as big,
    ):
        big.reply = "Answer from the big one."
        yield small, big


def test_each_name_and_alias_reaches_its_model(
    start_api: StartApi, two_models: tuple[FakeWorker, FakeWorker]
) -> None:
    small, big = two_models
    api = start_api()
    client = ollama.Client(host=api.url, timeout=10)
    oai = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=10)
    ask = [{"role": "user", "content": "hi"}]

    assert client.chat(model=MODEL, messages=ask).message.content == REPLY
    reply = client.chat(model="llama3:instruct", messages=ask)
    assert (reply.model, reply.message.content) == (OTHER, big.reply)
    assert client.generate(model=f"{OTHER}:latest", prompt="hi").response == big.reply
    result = oai.chat.completions.create(model="llama3", messages=ask)  # type: ignore[arg-type]
    assert (result.model, result.choices[0].message.content) == (OTHER, big.reply)
    streamed = oai.chat.completions.create(
        model="meta-llama/Meta-Llama-3-8B-Instruct",
        messages=ask,  # type: ignore[arg-type]
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == big.reply
    assert len(small.turns) == 1 and len(big.turns) == 4
    # The default model's turn goes to the plain queue unnamed, as the bots' turns do.
    assert {t.model for t in big.turns} == {OTHER} and small.turns[0].model is None

    # Both listings: the served names, then the aliases of served models (not "ghost").
    names = [MODEL, OTHER, "llama3", "llama3:instruct", "meta-llama/Meta-Llama-3-8B-Instruct"]
    assert sorted(m.model or "" for m in client.list().models) == sorted(names)
    assert sorted(m.id for m in oai.models.list()) == sorted(names)


def test_unknown_model_is_a_404_listing_what_is_served(
    start_api: StartApi, two_models: tuple[FakeWorker, FakeWorker]
) -> None:
    api = start_api()
    ask = [{"role": "user", "content": "hi"}]
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=api.url, timeout=10).chat(model="mistral", messages=ask)
    assert raised.value.status_code == 404
    assert raised.value.error.startswith('model "mistral" not found')
    assert MODEL in raised.value.error and "llama3:instruct" in raised.value.error

    # An alias whose model no worker serves is just as unknown.
    request = urllib.request.Request(
        f"{api.url}/v1/chat/completions",
        data=json.dumps({"model": "ghost", "messages": ask}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=10)
    assert http_error.value.code == 404
    error = json.loads(http_error.value.read())["error"]
    assert error["message"].startswith("The model `ghost` does not exist.")
    assert OTHER in error["message"] and error["type"] == "not_found_error"

    oai = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4o", messages=ask)  # type: ignore[arg-type]
    for worker in two_models:
        assert worker.turns == []


def test_aliases_must_not_clash() -> None:
    from shared.team_config import ConfigError, parse_config

    clash = """
models:
  available:
    - name: a
      aliases: ["x"]
    - name: b
      aliases: ["x"]
"""
    with pytest.raises(ConfigError, match="alias 'x' of 'b' already names 'a'"):
        parse_config(clash)
    with pytest.raises(ConfigError, match="aliases"):
        parse_config("models:\n  available:\n    - name: a\n      aliases: ['bad name']\n")


def test_show_resolves_aliases_and_reads_the_workers_record(
    start_api: StartApi, two_models: tuple[FakeWorker, FakeWorker], redis_conn: Redis
) -> None:
    from shared import model_info

    api = start_api()
    client = ollama.Client(host=api.url, timeout=10)
    bare = client.show(MODEL)  # no worker of it wrote a record: the basics
    assert bare.capabilities == ["completion"] and bare.modelinfo is not None
    assert bare.modelinfo["general.basename"] == MODEL
    record = {
        "family": "llama",
        "parameter_size": "8.0B",
        "quantization_level": "nf4",
        "capabilities": ["completion", "tools"],
        "template": "{{ messages }}",
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
    }
    model_info.write(redis_conn, OTHER, record)
    shown = client.show("llama3:instruct")  # an alias: the record of the model it names
    assert shown.details is not None
    assert (shown.details.family, shown.details.parameter_size) == ("llama", "8.0B")
    assert shown.details.quantization_level == "nf4"
    assert shown.modelinfo == record["model_info"] and shown.template == "{{ messages }}"
    assert shown.capabilities == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as raised:
        client.show("ghost")
    assert raised.value.status_code == 404
