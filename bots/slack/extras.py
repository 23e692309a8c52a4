"""Everything corral adds to Slack beyond answering messages, registered in one call.

The assistant pane (:mod:`bots.slack.assistant`), feedback buttons under answers
(:mod:`bots.slack.feedback`), the App Home tab (:mod:`bots.slack.home`) and the
"Summarize thread" message shortcut (:mod:`bots.slack.shortcut`). Each feature is
a module of its own; the answers themselves go through :mod:`bots.slack.app`.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bots.slack.assistant import PaneStore, register_assistant
from bots.slack.commands import Host
from bots.slack.feedback import register_feedback
from bots.slack.home import register_home
from bots.slack.shortcut import register_summarize


def register_extras(app: AsyncApp, host: Host) -> None:
    team, settings = host.team, host.settings
    register_assistant(app, PaneStore(host.turns.aredis), team)
    register_feedback(app, team)
    register_home(app, team, settings.display_model_name, settings.system_prompt)
    register_summarize(app, host)
