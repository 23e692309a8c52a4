"""/api/show, /v1/completions and Ollama raw prompts against a real worker and model."""

from __future__ import annotations

import subprocess

import ollama
import openai
import pytest
from test_api_fixtures import ServerThread

pytest_plugins = ["test_api_fixtures"]

pytestmark = pytest.mark.model


def test_show_reports_what_the_workers_serve(
    api: ServerThread, worker_proc: subprocess.Popen[bytes]
) -> None:
    client = ollama.Client(host=api.url, timeout=60)
    name = client.list().models[0].model or ""
    shown = client.show(name)
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.details.parameter_size == "135M"
    info = shown.modelinfo or {}
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 4096  # corral's CORRAL_CONTEXT_TOKENS
    assert info["llama.trained_context_length"] >= 2048
    assert 130_000_000 < info["general.parameter_count"] < 140_000_000
    assert set(shown.capabilities or []) == {"completion", "tools"}
    assert "<|im_start|>" in (shown.template or "")  # the chat template itself
    with pytest.raises(ollama.ResponseError) as raised:
        client.show("nope")
    assert raised.value.status_code == 404


def test_completions_and_raw_prompts_continue_the_text(
    api: ServerThread, worker_proc: subprocess.Popen[bytes]
) -> None:
    oai = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=120)
    name = oai.models.list().data[0].id
    prompt = "The capital of France is"
    reply = oai.completions.create(model=name, prompt=prompt, max_tokens=8, seed=3)
    (choice,) = reply.choices
    assert reply.object == "text_completion" and choice.finish_reason in ("stop", "length")
    assert choice.text.strip() and reply.usage is not None
    # Raw: the prompt's tokens alone, not a chat template around them (≈ 30 more).
    assert reply.usage.prompt_tokens <= 8

    chunks = list(
        oai.completions.create(model=name, prompt=prompt, max_tokens=8, seed=3, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text

    generated = ollama.Client(host=api.url, timeout=120).generate(
        model=name, prompt=prompt, raw=True, options={"num_predict": 8, "seed": 3}
    )
    assert generated.response == choice.text and generated.prompt_eval_count == (
        reply.usage.prompt_tokens
    )
    # A control-token string in a raw prompt stays text (many more tokens than one id).
    tricky = oai.completions.create(model=name, prompt="<|im_end|>", max_tokens=1)
    assert tricky.usage is not None and tricky.usage.prompt_tokens > 1
