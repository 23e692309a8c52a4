"""The README's main command: `corral run` with no tokens chats locally, then stops cleanly."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from corral_env import private_run_env

pytestmark = pytest.mark.model


def test_corral_run_answers_in_the_terminal_and_stops_everything(tmp_path: Path) -> None:
    env, cache = private_run_env(
        tmp_path,
        CORRAL_MAX_NEW_TOKENS="16",
        CORRAL_SLOTS="2",
        CORRAL_KV_CACHE_TOKENS="4096",
    )
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", "run"],
        input="Say hello to the team.\n/quit\n", env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    match = re.search(r"private Redis at redis://127\.0\.0\.1:(\d+)", out)
    assert match, out
    answer = out.split("corral> ", 1)[1].split("\nyou> ", 1)[0]
    assert answer.strip() and "[" not in answer[:1], out  # real text, not an error notice
    assert "stopping" in out
    # Everything it started is gone: the private Redis no longer answers.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(match[1])), 1):
        pass
    assert any((cache / "redis").glob("appendonly*"))  # AOF on: accepted turns survive restarts
    assert "worker serving queue" in (cache / "logs" / "worker.log").read_text()
