"""The environment of a private `corral run` for tests: its own cache (reusing the
converted model), no CORRAL_* or REDIS_URL of the developer's, no tokens or secrets."""

from __future__ import annotations

import os
from pathlib import Path

from shared.settings import load_settings
from worker.model_source import materialize_embedded


def private_run_env(tmp_path: Path, **overrides: str) -> tuple[dict[str, str], Path]:
    """The environment and the cache folder (logs under ``cache/logs``)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    # Reuse the converted model; everything else (Redis data, logs) is private to this test.
    (cache / "models").symlink_to(materialize_embedded(load_settings().cache_dir).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "REDIS_URL"))}
    env = {k: v for k, v in env.items() if "TOKEN" not in k and "SECRET" not in k}
    env.update(CORRAL_CACHE_DIR=str(cache), **overrides)
    return env, cache
