"""The addresses `corral run` serves, said once at start so nobody has to guess them."""

from __future__ import annotations

from shared.settings import Settings


def _browsable(host: str) -> str:
    """A host a browser on this machine can open (a wildcard bind is not one)."""
    if host in ("", "0.0.0.0", "::"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def served_addresses(settings: Settings, services: list[str]) -> list[str]:
    """One line per thing people can talk to."""
    lines: list[str] = []
    if not services:
        lines.append("chat: here, in this terminal (/reset forgets, /quit leaves)")
    if "api" in services:
        from bots.api.settings import ApiSettings

        api = ApiSettings()
        base = f"http://{_browsable(api.host)}:{api.port}"
        lines += [
            f"web chat: {base}/",
            f"Ollama API: {base}/api/chat (and /api/generate, /api/tags)",
            f"OpenAI API: {base}/v1/chat/completions (and /v1/models)",
            f"health: {base}/healthz",
        ]
    else:
        lines.append("web chat and HTTP API: off (CORRAL_API=1 adds them)")
    if "discord" in services:
        lines.append("Discord: mention the bot in a channel, or DM it")
    if "slack" in services:
        lines.append("Slack: mention the app in a channel, or DM it")
    return lines
