"""The built image passes its smoke test (deploy/smoke): opt-in, as it needs a container
engine and an image built from the Dockerfile (minutes, and the network for PyPI).

    docker build -t corral:latest . && CORRAL_TEST_IMAGE=corral:latest pytest tests/test_image.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_image_smoke_test() -> None:
    image = os.environ.get("CORRAL_TEST_IMAGE")
    engine = shutil.which("podman") or shutil.which("docker")
    if not (image and engine):
        pytest.skip("set CORRAL_TEST_IMAGE to a built corral image (needs podman or docker)")
    smoke = ROOT / "deploy" / "smoke"
    result = subprocess.run(
        [engine, "build", "--pull=never", "--no-cache", "--build-arg", f"IMAGE={image}",
         "-f", str(smoke / "Containerfile"), str(smoke)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for step in ("runs unprivileged", "worker registered", "api serves the web page", "answered"):
        assert f"ok   {step}" in output, output[-4000:]
