"""Embedding requests through the queue: the API enqueues, a worker of the model answers.

Not a :class:`~shared.contract.Turn`: nothing is streamed and nothing is said to a
user, so the job's return value carries the vectors. The payload is versioned like
the turn contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from redis import Redis
from rq.job import Job

from .contract import CONTRACT_VERSION
from .settings import Settings
from .turnqueue import model_queue

JOB_FUNC = "worker.embed.run_embed"
MAX_INPUTS = 256


class EmbedRequest(BaseModel):
    v: int = CONTRACT_VERSION
    inputs: list[str] = Field(min_length=1, max_length=MAX_INPUTS)
    truncate: bool = True  # cut inputs longer than the context instead of failing


def enqueue_embed(conn: Redis, settings: Settings, model: str | None, request: EmbedRequest) -> Job:
    return model_queue(conn, settings, model).enqueue(
        JOB_FUNC,
        request.model_dump(),
        ttl=settings.job_ttl,
        job_timeout=settings.job_timeout,
        result_ttl=300,
        failure_ttl=3600,
        description=f"embed {len(request.inputs)} input(s)",
    )


def embed_result(data: Any) -> tuple[list[list[float]], int, str]:
    """(vectors, prompt tokens, error) from a finished job's return value."""
    if not isinstance(data, dict):
        return [], 0, "the worker returned no embeddings"
    return data.get("embeddings") or [], int(data.get("prompt_tokens") or 0), data.get("error", "")
