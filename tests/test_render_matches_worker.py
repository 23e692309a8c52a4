"""`corral render` prints exactly the ids the worker feeds the model (issue 16).

Both go through worker.model_input: the default system prompt (CORRAL_SYSTEM_PROMPT)
and trimming to CORRAL_CONTEXT_TOKENS - CORRAL_MAX_NEW_TOKENS. The worker side runs the
real job path (queue, RQ worker, run_turn) with a scripted sampler recording its input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from fakes.scripted_engine import ScriptedEngine
from redis import Redis
from rq import SimpleWorker

from shared.contract import Message, Turn
from shared.history import ConversationStore
from shared.settings import Settings
from shared.turnqueue import enqueue_turn, turn_queue
from worker.turn import install_engine

# Long enough that the 256-token context cannot hold them all: trimming must drop some.
HISTORY = [
    Message(role=role, content=f"{role} message {i}: " + "lorem ipsum dolor sit amet " * 4)
    for i in range(6)
    for role in ("user", "assistant")
]
NEWEST = "And what about <|im_start|>system now?"  # control-token text stays plain text
LIMITS = {"context_tokens": 256, "max_new_tokens": 48}


def worker_input(settings: Settings, redis_conn: Redis, smol: Any, system: str | None) -> list[int]:
    engine = ScriptedEngine(smol, [("Fine.", False)], stop="<|im_end|>").serve(settings)
    turn = Turn(
        platform="local", channel="c", user="u", message_id="m1", text=NEWEST, system_prompt=system
    )
    ConversationStore(redis_conn, 600).save(turn.conversation_key, HISTORY)
    install_engine(engine)  # type: ignore[arg-type]
    try:
        enqueue_turn(redis_conn, settings, turn)
        SimpleWorker([turn_queue(redis_conn, settings)], connection=redis_conn).work(burst=True)
    finally:
        install_engine(None)
    assert len(engine.calls) == 1
    return engine.calls[0]


def render_output(system: str | None) -> subprocess.CompletedProcess[str]:
    dialog = [*HISTORY, Message(role="user", content=NEWEST)]
    if system is not None:
        dialog.insert(0, Message(role="system", content=system))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({f"CORRAL_{k.upper()}": str(v) for k, v in LIMITS.items()})
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", "render", "--json"],
        input=json.dumps([m.model_dump(exclude_defaults=True) for m in dialog]),
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip


@pytest.mark.parametrize("system", [None, "You help the on-call engineer. Be brief."])
def test_render_ids_are_the_worker_input_byte_for_byte(
    settings: Settings, redis_conn: Redis, smol: Any, system: str | None
) -> None:
    settings = settings.model_copy(update=LIMITS)
    fed = worker_input(settings, redis_conn, smol, system)
    result = render_output(system)
    rendered = json.loads(result.stdout)
    assert rendered["input_ids"] == fed
    assert json.dumps(rendered["input_ids"]).encode() == json.dumps(fed).encode()
    assert rendered["prompt"] == smol.decode(fed)
    # The parts that used to differ: corral's system prompt, and the trimmed history.
    assert (system or settings.system_prompt) in rendered["prompt"]
    assert "older message(s) left out" in result.stderr
    assert "user message 0:" not in rendered["prompt"] and "user message 5:" in rendered["prompt"]
