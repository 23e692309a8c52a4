"""Settings of the HTTP API server alone, read from ``CORRAL_API_*`` variables.

Kept apart from :mod:`shared.settings` so the bots and the worker never see
(or validate) options that only this server uses.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 11434  # Ollama's port, so Ollama clients work without configuration


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_API_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # Loopback by default: the API has no token unless one is set, so exposing it
    # to the network should be a deliberate choice.
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    # When set, every route except the page, its files and /healthz needs
    # ``Authorization: Bearer <token>``.
    token: SecretStr | None = None
    max_body: int = Field(default=1024 * 1024, ge=1024)  # bytes; a larger request gets 413
    # Refuse turns with 503 when no worker is registered, instead of letting them
    # wait in the queue until they go stale.
    require_worker: bool = True
