"""LangChain, a framework nobody here wrote, with corral as its OpenAI and Ollama backend:
structured output into a pydantic model, a bound tool with a forced choice, JSON mode."""

from __future__ import annotations

import json
import subprocess

import pytest
from pydantic import BaseModel, Field
from test_api_fixtures import ServerThread

pytest_plugins = ["test_api_fixtures"]

pytestmark = pytest.mark.model

langchain_openai = pytest.importorskip("langchain_openai")
langchain_ollama = pytest.importorskip("langchain_ollama")


class City(BaseModel):
    """A city and where it is."""

    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int = Field(ge=0)
    capital: bool


class Forecast(BaseModel):
    """Get the weather forecast for a city."""

    city: str = Field(max_length=40)
    days: int = Field(ge=1, le=7)


def test_langchain_drives_corral(api: ServerThread, worker_proc: subprocess.Popen[bytes]) -> None:
    import ollama

    name = ollama.Client(host=api.url).list().models[0].model or ""
    chat = langchain_openai.ChatOpenAI(
        base_url=f"{api.url}/v1", api_key="x", model=name, temperature=0, max_tokens=120,
        max_retries=0, timeout=120,
    )  # fmt: skip
    city = chat.with_structured_output(City).invoke("Tell me about Paris.")
    assert isinstance(city, City)

    bound = chat.bind_tools([Forecast], tool_choice="Forecast")
    message = bound.invoke("What will the weather be in Oslo this week?")
    (call,) = message.tool_calls
    assert call["name"] == "Forecast"
    Forecast.model_validate(call["args"])

    local = langchain_ollama.ChatOllama(
        base_url=api.url, model=name, format=City.model_json_schema(), temperature=0,
        num_predict=120,
    )  # fmt: skip
    City.model_validate(json.loads(local.invoke("Tell me about Rome.").content))
    as_json = langchain_ollama.ChatOllama(
        base_url=api.url, model=name, format="json", num_predict=80
    )
    reply = as_json.invoke("Give a dog as a JSON object with the keys name and breed.")
    assert isinstance(json.loads(reply.content), dict)
