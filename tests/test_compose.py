"""docker-compose.yml: validated without a Docker engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_shared_env_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "worker", "discord", "slack"} <= set(services)
    for name in ("worker", "discord", "slack", "api"):
        assert services[name]["env_file"] == [".env"], name
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"


def test_redis_persists_with_aof(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_worker_reserves_a_gpu_and_caches_models(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert any(v.startswith("model-cache:") for v in worker["volumes"])
    assert worker["command"] == ["corral", "worker"]


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if not binary:
        pytest.skip("docker-compose (Debian package) is not installed")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text("DISCORD_TOKEN=x\n")
    result = subprocess.run(
        [binary, "--profile", "discord", "--profile", "slack", "--profile", "api", "config", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    broken = (ROOT / "docker-compose.yml").read_text().replace("services:", "servces:")
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = subprocess.run([binary, "config", "-q"], cwd=tmp_path, capture_output=True, timeout=60)
    assert result.returncode != 0  # the check does reject a broken file
