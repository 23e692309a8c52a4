"""Embeddings through the queue from a real worker: both dialects' clients, the older
Ollama route, base64 and float, and vectors that carry meaning."""

from __future__ import annotations

import subprocess

import ollama
import openai
import pytest
from test_api_fixtures import ServerThread

pytest_plugins = ["test_api_fixtures"]

pytestmark = pytest.mark.model


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors are unit length


def test_embeddings_in_both_dialects(
    api: ServerThread, worker_proc: subprocess.Popen[bytes]
) -> None:
    client = ollama.Client(host=api.url, timeout=120)
    name = client.list().models[0].model or ""
    texts = ["The cat sat on the mat.", "A kitten rested on the rug.", "Stock prices fell."]
    result = client.embed(model=name, input=texts)
    cat, kitten, stocks = result.embeddings
    assert len(cat) == 576  # SmolLM2-135M's hidden size
    assert abs(cosine(cat, cat) - 1) < 1e-4
    assert cosine(cat, kitten) > cosine(cat, stocks)
    assert (result.prompt_eval_count or 0) > 10
    older = client.embeddings(model=name, prompt=texts[0]).embedding
    assert max(abs(x - y) for x, y in zip(older, cat, strict=True)) < 1e-4

    oai = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0, timeout=120)
    response = oai.embeddings.create(model=name, input=texts[:2])  # base64 on the wire
    assert [d.index for d in response.data] == [0, 1]
    assert max(abs(x - y) for x, y in zip(response.data[0].embedding, cat, strict=True)) < 1e-4
    plain = oai.embeddings.create(model=name, input=texts[2], encoding_format="float")
    assert max(abs(x - y) for x, y in zip(plain.data[0].embedding, stocks, strict=True)) < 1e-4
    assert response.usage.prompt_tokens > 0

    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        oai.embeddings.create(model=name, input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError, match="list of strings"):
        oai.embeddings.create(model=name, input=[[1, 2, 3]])
