"""Process start of the dialer: migrate, ensure topics, then serve the Twilio voice webhooks, the
outbox relay, the call-commands consumer and the dispatcher in one event loop."""

from __future__ import annotations

from pathlib import Path

from dialer.adapters import migrations
from dialer.adapters.tables import outgoing_calls
from dialer.entrypoints.http import create_router
from dialer.handlers.placing import CallTarget, place_call_intake
from dialer.settings import DialerSettings
from manual_actions.contracts import topics
from manual_actions.twilio_support import TwilioServiceSpec, twilio_main

SPEC = TwilioServiceSpec[DialerSettings](
    migrations_dir=Path(migrations.__file__).parent,
    commands_topic=topics.CALL_COMMANDS,
    table=outgoing_calls,
    target=CallTarget,
    intake=lambda engine, wake: place_call_intake(engine, stored=wake),
    router=create_router,
)


def main() -> None:
    twilio_main(DialerSettings(), SPEC)


if __name__ == "__main__":
    main()
