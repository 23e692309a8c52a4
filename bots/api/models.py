"""Which model a request's ``model`` names: one a live worker serves, or an alias of one.

The served names come from the workers themselves (each records the model it loaded;
only live workers count), the aliases from corral.yaml (``models.available[].aliases``,
re-read when the file changes). A turn goes to the queue of the model it names, so with
two models served each request reaches the one it asked for. An unknown name is a 404 in
the route's dialect, listing what is served, as Ollama and vLLM answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bots.api.http import is_openai_path
from bots.api.turns import ApiError
from bots.client import TurnClient
from shared.settings import Settings
from shared.team_config import ConfigWatcher, config_path

# The web page asks for "default" before it has a model list; Ollama tags default to
# ":latest", which names the same model.
DEFAULT_NAME = "default"
LATEST = ":latest"


@dataclass(frozen=True)
class Served:
    names: list[str]  # what live workers serve (or the configured name, with no worker up)
    aliases: dict[str, str]  # alias -> served name, only for served models
    live: bool = True  # False: no worker is up, ``names`` is this server's own setting

    def listed(self) -> list[str]:
        """Every name a caller may use: served names first, then their aliases."""
        return [*self.names, *sorted(self.aliases)]

    def resolve(self, requested: str) -> str | None:
        """The served model ``requested`` names, or None when it names none."""
        name = requested.strip()
        for candidate in (name, name.removesuffix(LATEST)):
            if candidate in self.names:
                return candidate
            if candidate in self.aliases:
                return self.aliases[candidate]
        return None


class ModelRouter:
    def __init__(self, client: TurnClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.config = ConfigWatcher(config_path())

    async def served(self) -> Served:
        status = await self.client.status()
        names = status.models or [self.settings.display_model_name]
        live = bool(status.models)
        self.config.poll()  # cheap: one stat of corral.yaml
        aliases = {
            alias: target
            for alias, target in self.config.config.models.aliases().items()
            if target in names
        }
        return Served(names, aliases, live)

    def queue_model(self, name: str | None) -> str | None:
        """What a turn for ``name`` names to be queued: None for the default model, whose
        workers consume the plain queue (shared/turnqueue.py serving_queues), as bot turns do.
        """
        default = self.config.config.models.default
        return None if name is None or default in ("", name) else name

    async def resolve(self, request: web.Request, requested: str) -> str | None:
        """The model name to queue the turn under; a 404 in the route's dialect if none."""
        served = await self.served()
        found = served.resolve(requested)
        if found is not None:
            # With no worker up yet, the default queue: whichever worker starts takes it.
            return found if served.live else None
        if requested.strip() == DEFAULT_NAME:
            return None  # whichever worker serves the default queue
        raise not_found(request.path, requested, served.listed())


def not_found(path: str, requested: str, served: list[str]) -> ApiError:
    listing = ", ".join(served) or "none"
    if is_openai_path(path):  # vLLM's wording
        message = f"The model `{requested}` does not exist. Models served: {listing}."
    else:  # Ollama's
        message = f'model "{requested}" not found (models served here: {listing})'
    return ApiError(404, message, "not_found_error")


MODELS = web.AppKey("models", ModelRouter)
