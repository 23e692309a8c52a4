"""The benchmark scripts run (tiny sizes, no timing assertions: benchmarks are not tests)."""

from __future__ import annotations

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


def test_constrained_decoding_benches_run() -> None:
    run = bench("bench/constrained.py", "--n", "1,2", "--tokens", "4", "--repeat", "1")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "json schema / unconstrained" in run.stdout

    run = bench("bench/grammar_masks.py", "--batch", "2", "--repeat", "1", "--libs", "llguidance")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "| SmolLM2 (49,152) | llguidance |" in run.stdout
