"""`corral run` stops everything on SIGTERM and SIGHUP as on Ctrl-C, and nothing outlives it.

A real supervisor with its private Redis (AOF), the worker (the embedded model)
and the API; signals as a terminal, systemd or a container runtime sends them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from corral_env import private_run_env

from corral.redis_server import free_port

pytestmark = pytest.mark.model

UP_LIMIT_S = 240


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text()
        found.update(int(p) for p in text.split())
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def wait_gone(pids: set[int], limit: float) -> set[int]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], set[int], Path]]:
    env, cache = private_run_env(
        tmp_path,
        CORRAL_API="1",
        CORRAL_API_PORT=str(free_port()),
        CORRAL_SLOTS="1",
        CORRAL_KV_CACHE_TOKENS="2048",
        CORRAL_SHUTDOWN_GRACE="3",
    )
    # Its own session, like a shell's foreground job: killpg(SIGINT) is the terminal's Ctrl-C.
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "run"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    worker_log = cache / "logs" / "worker.log"
    deadline = time.monotonic() + UP_LIMIT_S
    while not (worker_log.exists() and "worker serving queue" in worker_log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "stack did not come up"
        time.sleep(0.5)
    kids = children(process.pid)
    assert len(kids) == 3, kids  # redis, worker, api
    yield process, kids, cache
    for pid in kids | {process.pid}:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "ctrl-c"])
def test_corral_run_stops_everything_in_order(stack, how: str) -> None:  # type: ignore[no-untyped-def]
    process, kids, cache = stack
    redis_port = next(
        int(line.rsplit(":", 1)[1].split()[0].split("/")[0])
        for line in iter(process.stdout.readline, "")
        if "private Redis at" in line
    )
    if how == "ctrl-c":
        # The terminal sends SIGINT to its foreground group: only the supervisor is in it.
        assert all(os.getpgid(pid) != os.getpgid(process.pid) for pid in kids)
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(getattr(signal, how))
    assert process.wait(timeout=60) == 0
    assert wait_gone(kids, 5) == set()
    out = process.stdout.read()
    assert "stopping" in out
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", redis_port), 1):
        pass
    # The worker stopped while Redis was still up (Redis is stopped last).
    assert "could not connect" not in (cache / "logs" / "worker.log").read_text()


def test_children_exit_when_the_supervisor_is_killed(stack) -> None:  # type: ignore[no-untyped-def]
    process, kids, _ = stack
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    # Each child gets SIGTERM from the kernel; the worker takes its 3 s grace at most.
    assert wait_gone(kids, 30) == set()
