"""A chat in the terminal, through the same queue and worker as Discord and Slack."""

from __future__ import annotations

import getpass
import sys
import time
import uuid
from collections.abc import Callable
from typing import TextIO

from redis import Redis
from rq import Worker

from bots.answer import Reply, silence_timeout
from shared.contract import Turn, conversation_key
from shared.history import ConversationStore
from shared.settings import Settings
from shared.streams import follow
from shared.turnqueue import QueueFull, enqueue_turn, position

HELP = "Type a message and press Enter. /reset forgets this conversation, /quit (or Ctrl-D) leaves."


def wait_for_worker(
    conn: Redis, out: TextIO, alive: Callable[[], bool] | None = None, timeout: float = 900.0
) -> bool:
    """Show progress until a worker is registered (the model is loaded)."""
    start = time.monotonic()
    live = out.isatty()
    if not live:
        out.write("loading the model…\n")
    while time.monotonic() - start < timeout and (alive is None or alive()):
        if Worker.all(connection=conn):
            if live:
                out.write("\r" + " " * 40 + "\r")
            return True
        if live:
            out.write(f"\rloading the model… {time.monotonic() - start:4.0f}s")
            out.flush()
        time.sleep(0.5)
    return False


def ask(conn: Redis, settings: Settings, turn: Turn, out: TextIO) -> None:
    """Enqueue one turn and print the answer as it streams."""
    try:
        job = enqueue_turn(conn, settings, turn)
    except QueueFull as exc:
        out.write(f"[{exc.user_message}]\n")
        out.flush()
        return
    ahead = position(conn, settings, job.id).ahead
    if ahead:
        out.write(f"(waiting: {ahead} ahead)\n")
    out.write("corral> ")
    out.flush()
    reply = Reply()
    for event in follow(conn, job.id, timeout=silence_timeout(settings)):
        change = reply.apply(event)
        if event.kind == "error":
            out.write(f"\n[{event.error}]")
        if change.dropped:
            out.write("\n[retrying]\ncorral> ")  # a retried attempt starts over
        elif event.kind == "started" and event.resume_from:
            out.write("\ncorral> …")  # it carries on where the answer stopped
        out.write(change.appended)
        if reply.phase == "done" and reply.finish_reason == "length":
            out.write(" […]")
        out.flush()
    out.write("\n")


def chat(
    settings: Settings,
    redis_url: str,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    worker_alive: Callable[[], bool] | None = None,
) -> None:
    conn = Redis.from_url(redis_url)
    store = ConversationStore(conn, settings.history_ttl)
    if not wait_for_worker(conn, out, worker_alive):
        out.write("\nno worker came up; see the worker log\n")
        return
    session = uuid.uuid4().hex[:12]
    user = getpass.getuser()
    out.write(f"corral — model {settings.display_model_name}. {HELP}\n")
    while True:
        out.write("you> ")
        out.flush()
        line = stdin.readline()
        if not line:
            out.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            store.reset(conversation_key("local", "terminal", session))
            out.write("(conversation forgotten)\n")
            continue
        turn = Turn(
            platform="local",
            channel="terminal",
            thread=session,
            user=user,
            message_id=uuid.uuid4().hex,
            text=text,
        )
        try:
            ask(conn, settings, turn, out)
        except KeyboardInterrupt:
            out.write("\n(stopped waiting; the answer still lands in the history)\n")
