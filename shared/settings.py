"""One settings object, read from the environment (and an optional ``.env``).

Every process (bots, worker, local chat) reads the same variables, so a single
env file configures a whole deployment. Invalid values fail at start with one
line naming the variable, never a pydantic dump.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SYSTEM_PROMPT = (
    "You are corral, a helpful assistant for a team chat. Answer clearly and concisely; "
    "use Markdown for code."
)


KNOWN_TOOLS = ("calculator", "current_time", "search_conversation", "brave_search", "wolfram_alpha")


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # Redis: unset means "start a private server" for `corral run`.
    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL", "CORRAL_REDIS_URL"))
    queue_name: str = "corral"

    # Model. Empty model means the embedded SmolLM2-135M-Instruct.
    model: str = ""
    model_name: str = ""  # display name; derived from `model` when empty
    gguf_file: str = ""
    quantization: Literal["auto", "nf4", "none"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: Path = Path.home() / ".cache" / "corral"
    hf_token: SecretStr | None = Field(None, validation_alias=_env("HF_TOKEN", "CORRAL_HF_TOKEN"))

    # Sampling defaults: those of the reference Llama 3 pipeline.
    temperature: float = Field(0.6, ge=0.0, le=5.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1, le=32768)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    context_tokens: int = Field(4096, ge=256)
    # Vision models (Llama 3.2 Vision): how many of the conversation's most recent images the
    # model is shown. Meta trained it on one image per prompt; older ones are left out.
    vision_max_images: int = Field(1, ge=1, le=8)

    # Tools the model may call (Llama 3.1 format): a comma list of calculator, current_time,
    # search_conversation, brave_search (needs BRAVE_API_KEY), wolfram_alpha (needs
    # WOLFRAM_ALPHA_APP_ID), or "all". Empty: no tools.
    tools: str = ""
    # A moderation rules file (YAML: rules with Llama Guard categories, blocked categories per
    # channel; see worker/moderation.py). Input and output of every turn are checked against it.
    moderation_rules: Path | None = None
    # A Llama Guard-style classifier model (directory or hub id, e.g. meta-llama/Llama-Guard-3-1B)
    # the worker loads beside the chat model; it judges every question and answer too, under
    # the rules file's per-channel blocked categories (without one: all blocked everywhere).
    guard_model: str = ""

    # Queue and history.
    history_ttl: int = Field(7 * 24 * 3600, ge=60)  # seconds a quiet conversation is kept
    job_ttl: int = Field(600, ge=10)  # a turn still queued after this is dropped as stale
    job_timeout: int = Field(300, ge=10)  # a running turn is killed after this
    # Overload (admission, in shared/turnqueue.py): turns waiting or running at once, in all and per
    # user (0: unbounded); beyond either, a turn is refused at once with "busy, try again".
    queue_max: int = Field(1000, ge=0)
    queue_max_per_user: int = Field(20, ge=0)
    # Per-user rate limit (a token bucket): sustained turns per minute (0: off) and burst.
    user_turns_per_minute: float = Field(30.0, ge=0.0)
    user_burst: int = Field(20, ge=1)
    # On SIGTERM a worker lets running turns finish for this long, then hands the rest
    # back to the queue (another worker restarts them). Keep the orchestrator's kill
    # delay (compose stop_grace_period) above this plus ~15 s.
    shutdown_grace: int = Field(30, ge=0)
    slots: int = Field(0, ge=0, le=512)  # concurrent turns per worker; 0 picks by device
    max_batch: int = Field(0, ge=0, le=4096)  # requests per decode step; 0 lets transformers pick
    # KV cache capacity in tokens, shared by all running turns. 0: on CUDA, most of the free
    # GPU memory; on CPU, a fixed 16k tokens (transformers would otherwise take most of the RAM).
    kv_cache_tokens: int = Field(0, ge=0)
    # Which engine answers turns: "transformers" loads the model in the worker process;
    # "openai" streams from an OpenAI-compatible /v1/chat/completions server (vLLM, TGI,
    # Ollama, another corral api) at engine_url, e.g. http://gpu-box:8000/v1.
    engine: Literal["transformers", "openai"] = "transformers"
    engine_url: str = ""
    engine_api_key: SecretStr | None = None
    engine_model: str = ""  # model name sent upstream; empty: the first one /v1/models lists
    engine_vision: bool = False  # the upstream model takes images (sent as data: URLs)
    # Benchmarks only: generate exactly max_new_tokens, ignoring end-of-turn tokens.
    ignore_eos: bool = False
    # Weights' dtype on CPU: auto = bfloat16 where the CPU computes it natively (AVX512-BF16,
    # AMX; 1.6x the batched tok/s of float32 on an EPYC), else float32.
    cpu_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Top-p and sampling without full-vocabulary sorts and draws (worker/fast_sampling.py);
    # off only to measure the library's own against it.
    fast_sampling: bool = True

    api: bool = False  # `corral run` also serves the HTTP API and web chat

    # Platforms. Secrets stay SecretStr so they never print.
    discord_token: SecretStr | None = Field(None, validation_alias=_env("DISCORD_TOKEN"))
    slack_bot_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_BOT_TOKEN"))
    slack_app_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_APP_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=_env("SLACK_SIGNING_SECRET")
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @field_validator("moderation_rules")
    @classmethod
    def _rules_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: str) -> str:
        names = {n.strip() for n in value.split(",") if n.strip()}
        unknown = names - {"all", *KNOWN_TOOLS}
        if unknown:
            raise ValueError(
                f"unknown tool {sorted(unknown)[0]!r}; known: {', '.join(KNOWN_TOOLS)}"
            )
        return ",".join(sorted(names))

    @property
    def display_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if not self.model:
            return "smollm2-135m-instruct"
        return Path(self.model.rstrip("/")).name or self.model


def _variable_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    info = Settings.model_fields.get(field)
    if info is None:
        return field.upper()  # already the environment variable's name (an alias)
    alias = getattr(info, "validation_alias", None) if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"CORRAL_{field.upper()}"


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning a validation failure into one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = _variable_name(first.get("loc", ()))
        value = first.get("input")
        shown = "" if "token" in name.lower() or "secret" in name.lower() else f" (got {value!r})"
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {name}: {message}{shown}") from None
