"""Model sources: the nf4 4-bit path, and clear errors for models that cannot load."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from redis import Redis

from shared.contract import Turn
from shared.settings import Settings, load_settings
from shared.streams import follow
from shared.turnqueue import enqueue_turn
from worker.engine import TransformersEngine
from worker.model_source import ModelUnavailable, load


def run_worker(tmp_path: Path, redis_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A live Redis: `corral worker` checks it first (seconds), then loads the model (minutes).
    base = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    base.update(HF_HUB_OFFLINE="1", REDIS_URL=redis_url, **env)
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", "worker"],
        env=base, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_gated_llama3_without_hf_token_says_what_to_do(tmp_path: Path, redis_url: str) -> None:
    result = run_worker(tmp_path, redis_url, CORRAL_MODEL="meta-llama/Meta-Llama-3-8B-Instruct")
    assert result.returncode == 3
    assert "gated" in result.stderr and "HF_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_model_is_one_clear_line(tmp_path: Path, redis_url: str) -> None:
    result = run_worker(
        tmp_path, redis_url, CORRAL_MODEL="someone/no-such-model", HF_TOKEN="hf_secretvalue"
    )
    assert result.returncode == 3, result.stderr
    assert "cannot load model someone/no-such-model" in result.stderr
    assert "Traceback" not in result.stderr and "hf_secretvalue" not in result.stderr


def test_missing_local_directory_is_treated_as_unloadable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="cannot load model"):
        load(load_settings(model=str(tmp_path / "nope"), _env_file=None))  # type: ignore[call-arg]


@pytest.mark.model
def test_nf4_four_bit_model_answers_through_the_queue(
    start_worker: object, redis_conn: Redis, settings: Settings
) -> None:
    start_worker(quantization="nf4")  # type: ignore[operator]
    turn = Turn(
        platform="local", channel="c", user="u", message_id=uuid.uuid4().hex,
        text="What is the capital of France?",
    )  # fmt: skip
    events = list(follow(redis_conn, enqueue_turn(redis_conn, settings, turn).id, timeout=300))
    assert events[-1].kind == "done" and events[-1].text.strip()


@pytest.mark.model
def test_nf4_load_really_quantizes_the_linear_layers() -> None:
    import bitsandbytes as bnb

    settings = load_settings(quantization="nf4", kv_cache_tokens=1024, _env_file=None)  # type: ignore[call-arg]
    loaded = load(settings)
    layers = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_state.quant_type == "nf4" for m in layers)
    engine = TransformersEngine(loaded, settings)
    try:
        ids = loaded.tokenizer("Hello", add_special_tokens=False)["input_ids"]
        assert engine.generate(ids, max_new_tokens=4).completion_tokens > 0
    finally:
        engine.close()
