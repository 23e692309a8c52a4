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


def compose_config(directory: Path, *args: str) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    if not binary:
        pytest.skip("docker-compose (Debian package) is not installed")
    result = subprocess.run(
        [binary, *args, "config"], cwd=directory, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_documented_start_works_from_the_env_example(tmp_path: Path) -> None:
    """`cp .env.example .env && docker compose up -d`: the file it needs exists and is enough."""
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")  # cp follows the link, as here
    services = compose_config(tmp_path)["services"]
    for name in ("redis", "worker", "api"):  # no profile needed for a first start
        assert "profiles" not in services[name], name
    for name in ("discord", "slack"):  # the bots need tokens: opt in
        assert services[name]["profiles"] == [name]
    # The API is published on the host's loopback only, unless .env says otherwise.
    assert services["api"]["ports"] == ["127.0.0.1:11434:11434/tcp"]
    with (tmp_path / ".env").open("a") as env:
        env.write("CORRAL_API_PUBLISH=0.0.0.0:8080\n")
    services = compose_config(tmp_path)["services"]
    assert services["api"]["ports"] == ["0.0.0.0:8080:11434/tcp"]


def test_worker_and_api_have_health_checks_the_cli_supports(compose: dict[str, Any]) -> None:
    from corral.cli import build_parser

    parser = build_parser()
    for name in ("worker", "api"):
        check = compose["services"][name]["healthcheck"]
        kind, program, *args = check["test"]
        assert kind == "CMD" and program == "corral"
        parsed = parser.parse_args(args)  # a flag the CLI lacks would exit here
        assert parsed.command == "status"
    assert parser.parse_args(compose["services"]["worker"]["healthcheck"]["test"][2:]).this_host
    # The model's first download or conversion must not count as failures.
    assert compose["services"]["worker"]["healthcheck"]["start_period"] == "600s"


def test_model_cache_paths_match_the_image(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    worker = compose["services"]["worker"]
    assert "model-cache:/models" in worker["volumes"]
    for name in ("HF_HOME", "CORRAL_CACHE_DIR"):
        value = worker["environment"][name]
        assert value.startswith("/models/") and f"{name}={value}" in dockerfile
