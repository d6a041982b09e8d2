"""Process start of sms-sender: migrate, ensure topics, then serve the Twilio webhooks, the outbox
relay, the sms-commands consumer, the dispatcher and the reconciliation loop in one event loop
(the shared wiring, ``manual_actions.twilio_support.build_twilio_service``, of ``SPEC``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from twilio.rest import Client

from manual_actions.contracts import topics
from manual_actions.twilio_support import ServiceLoop, TwilioServiceSpec, twilio_main
from sms_sender.adapters import migrations
from sms_sender.adapters.tables import outgoing_sms
from sms_sender.entrypoints.http import create_router
from sms_sender.handlers.reconcile import Reconciler
from sms_sender.handlers.sending import SmsTarget, send_sms_intake
from sms_sender.settings import SmsSenderSettings


def reconciliation(settings: SmsSenderSettings, engine: AsyncEngine, client: Client) -> Sequence[ServiceLoop]:
    """The reconciliation loop: ``SmsTarget`` leaves unknown outcomes to it, so it is part of SPEC
    (a process without it would never report them)."""
    return [Reconciler(engine, client, settings)]


SPEC = TwilioServiceSpec[SmsSenderSettings](
    migrations_dir=Path(migrations.__file__).parent,
    commands_topic=topics.SMS_COMMANDS,
    table=outgoing_sms,
    target=SmsTarget,
    intake=lambda engine, wake: send_sms_intake(engine, stored=wake),
    router=create_router,
    loops=reconciliation,
)


def main() -> None:
    twilio_main(SmsSenderSettings(), SPEC)


if __name__ == "__main__":
    main()
