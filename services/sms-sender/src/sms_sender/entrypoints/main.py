"""Process start of sms-sender: migrate, ensure topics, then serve the Twilio webhooks, the outbox
relay, the sms-commands consumer and the dispatcher in one event loop."""

from __future__ import annotations

from pathlib import Path

from manual_actions.contracts import topics
from manual_actions.twilio_support import TwilioServiceSpec, twilio_main
from sms_sender.adapters import migrations
from sms_sender.adapters.tables import outgoing_sms
from sms_sender.entrypoints.http import create_router
from sms_sender.handlers.sending import SmsTarget, send_sms_intake
from sms_sender.settings import SmsSenderSettings

SPEC = TwilioServiceSpec(
    migrations_dir=Path(migrations.__file__).parent,
    commands_topic=topics.SMS_COMMANDS,
    table=outgoing_sms,
    target=SmsTarget,
    intake=lambda engine, wake: send_sms_intake(engine, stored=wake),
    router=create_router,
)


def main() -> None:
    twilio_main(SmsSenderSettings(), SPEC)


if __name__ == "__main__":
    main()
