"""End to end through a real `corral worker` with the embedded small model."""

from __future__ import annotations

import subprocess

import ollama
import openai
import pytest
from test_api_fixtures import ServerThread

pytest_plugins = ["test_api_fixtures"]

pytestmark = pytest.mark.model


def test_ollama_and_openai_clients_get_real_answers(
    api: ServerThread, worker_proc: subprocess.Popen[bytes]
) -> None:
    client = ollama.Client(host=api.url, timeout=120)
    model = client.list().models[0].model
    result = client.generate(
        model=model, prompt="Say hello.", stream=False, options={"num_predict": 8}
    )
    assert result.done and result.response.strip()
    assert result.done_reason in ("stop", "length")
    assert 0 < result.eval_count <= 8
    assert result.prompt_eval_count > 0 and result.eval_duration > 0

    parts = list(
        client.chat(
            model=model,
            messages=[{"role": "user", "content": "Name a colour."}],
            options={"num_predict": 8, "temperature": 0},
            stream=True,
        )
    )
    assert parts[-1].done and "".join(p.message.content for p in parts[:-1]).strip()

    oai = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=120)
    chunks = list(
        oai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=8,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
