"""The benchmark scripts run (tiny sizes, no timing assertions: benchmarks are not tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_bench_scripts_run() -> None:
    run = bench("bench/cpu_concurrency.py", "--n", "1,2", "--tokens", "4", "--http", "--static")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "corral / reference tok/s" in run.stdout
    assert "api / static tok/s" in run.stdout

    run = bench("bench/queue_overhead.py", "--tokens", "4", "--repeat", "1")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "end to end / bare:" in run.stdout

    import torch

    if not torch.cuda.is_available():
        run = bench("bench/gpu.py")
        assert run.returncode == 2 and "needs a CUDA GPU" in run.stderr
    run = bench("bench/gpu.py", "--tiny", "--tokens", "4", "--concurrency", "1,2")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "N=2 / reference" in run.stdout


def test_the_soak_runs_and_counts() -> None:
    # One fault of each kind in ~50 s of sending; the table has both paths and the run
    # passes only with nothing lost, doubled or out of order.
    run = bench(
        "bench/soak.py", "--turns", "6", "--conversations", "2", "--api-conversations", "1",
        "--slots", "2", "--tokens", "4", "--minutes", "1.5", "--drain", "40",
        "--fault-interval", "9", "--seed", "3",
        # Without the platform paths, to keep the suite short: `python bench/soak.py`
        # runs them (docs/reliability.md has its latest table).
        "--slack-conversations", "0", "--discord-conversations", "0",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "chat (bots' path) |" in run.stdout and "HTTP API /api/chat |" in run.stdout
    # Every path answers (the API's clients ask for the served model: another name is a 404).
    for path in ("chat (bots' path)", "HTTP API /api/chat"):
        row = next(line for line in run.stdout.splitlines() if f"{path} |" in line)
        assert int(row.split("|")[3]) >= 1, row  # the "answered" column
    assert "404" not in run.stdout, run.stdout[-3000:]
    injected = dict(
        re.findall(r"(kill worker|freeze worker|restart redis|kill api) x(\d+)", run.stdout)
    )
    assert sum(int(n) for n in injected.values()) >= 4, run.stdout


def test_constrained_decoding_benches_run() -> None:
    run = bench("bench/constrained.py", "--n", "1,2", "--tokens", "4", "--repeat", "1")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "json schema / unconstrained" in run.stdout

    run = bench("bench/grammar_masks.py", "--batch", "2", "--repeat", "1", "--libs", "llguidance")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "| SmolLM2 (49,152) | llguidance |" in run.stdout
