"""Settings: defaults, one-line errors that name the variable, secrets never shown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")  # no .env from the developer's checkout
    for name in ("REDIS_URL", "CORRAL_TOP_P", "CORRAL_MODEL", "DISCORD_TOKEN", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_reference_pipeline_sampling() -> None:
    settings = load_settings()
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.6, 0.9, 256)
    assert settings.redis_url is None
    assert settings.quantization == "auto"
    assert settings.display_model_name == "smollm2-135m-instruct"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/2")
    monkeypatch.setenv("CORRAL_MAX_NEW_TOKENS", "64")
    monkeypatch.setenv("CORRAL_MODEL", "/models/Meta-Llama-3-8B-Instruct/")
    settings = load_settings()
    assert settings.redis_url == "redis://example:6380/2"
    assert settings.max_new_tokens == 64
    assert settings.display_model_name == "Meta-Llama-3-8B-Instruct"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CORRAL_TOP_P", "3", "invalid setting CORRAL_TOP_P"),
        ("CORRAL_MAX_NEW_TOKENS", "lots", "invalid setting CORRAL_MAX_NEW_TOKENS"),
        ("CORRAL_QUANTIZATION", "int3", "invalid setting CORRAL_QUANTIZATION"),
        ("CORRAL_TOOLS", "calculator,shell", "invalid setting CORRAL_TOOLS: unknown tool 'shell'"),
        ("CORRAL_MODERATION_RULES", "/nonexistent.yaml", "invalid setting CORRAL_MODERATION_RULES"),
        ("REDIS_URL", "localhost:6379", "invalid setting REDIS_URL: must start with redis://"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_cli_reports_bad_setting_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"PATH": "/usr/bin:/bin", "CORRAL_TEMPERATURE": "hot"}
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", "chat"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and "CORRAL_TEMPERATURE" in lines[0], result.stderr


def test_secret_values_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "sekrit-token-value")
    settings = load_settings()
    assert "sekrit" not in repr(settings) and "sekrit" not in str(settings.model_dump())
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == "sekrit-token-value"
