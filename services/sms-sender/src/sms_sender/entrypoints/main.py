"""Process start of sms-sender: migrate, ensure topics, then serve the Twilio webhooks, the outbox
relay, the sms-commands consumer, the dispatcher and the reconciliation loop in one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from manual_actions.contracts import topics
from manual_actions.logging import configure_logging
from manual_actions.service import serve
from manual_actions.twilio_support import TwilioService, TwilioServiceSpec, build_twilio_service, make_client
from sms_sender.adapters import migrations
from sms_sender.adapters.tables import outgoing_sms
from sms_sender.entrypoints.http import create_router
from sms_sender.handlers.reconcile import Reconciler
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


async def build_sms_sender(settings: SmsSenderSettings) -> TwilioService:
    """The shared Twilio-service wiring of ``SPEC`` plus sms-sender's reconciliation loop.

    Always build sms-sender with this: ``SmsTarget`` leaves unknown outcomes to the loop, so a
    process without it would never report them.
    """
    service = await build_twilio_service(settings, SPEC)
    reconciler = Reconciler(service.engine, make_client(settings), settings)
    service.background.append(reconciler.run)
    # Before the engine is disposed (the last shutdown steps close the relay, producer, engine).
    service.on_shutdown.insert(0, reconciler.stop)
    return service


async def run(settings: SmsSenderSettings) -> None:
    service = await build_sms_sender(settings)
    await serve(service.app, settings, background=service.background, on_shutdown=service.on_shutdown)


def main() -> None:
    settings = SmsSenderSettings()
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
