"""Everything corral adds to Slack beyond answering messages, registered in one call.

The assistant pane (:mod:`bots.slack.assistant`), feedback buttons under answers,
the App Home tab and the "Summarize thread" message shortcut. Kept apart from the
answer pipeline so each feature is a module of its own with one registration here.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bots.slack.answer import Answerer
from bots.slack.assistant import PaneStore, register_assistant
from bots.slack.feedback import register_feedback
from bots.slack.home import register_home
from bots.slack.shortcut import register_summarize


def register_surface(app: AsyncApp, answerer: Answerer) -> None:
    team = answerer.team
    settings = answerer.settings
    register_assistant(app, PaneStore(answerer.turns.aredis), team)
    register_feedback(app, team)
    register_home(app, team, settings.display_model_name, settings.system_prompt)
    register_summarize(app, answerer)
