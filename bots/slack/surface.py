"""Everything corral adds to Slack beyond answering messages, registered in one call.

The assistant pane (:mod:`bots.slack.assistant`), feedback buttons under answers,
the App Home tab and the "Summarize thread" message shortcut. Kept apart from the
answer pipeline so each feature is a module of its own with one registration here.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bots.client import TurnClient
from bots.slack.assistant import PaneStore, register_assistant
from bots.team import TeamControls
from shared.settings import Settings


def register_surface(
    app: AsyncApp, settings: Settings, turns: TurnClient, team: TeamControls
) -> None:
    register_assistant(app, PaneStore(turns.aredis), team)
