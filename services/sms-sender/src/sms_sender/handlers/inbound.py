"""SMS contacts send us: store each once and publish SmsReceived in the same transaction."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.contracts import Envelope, topics
from manual_actions.contracts.messages import SmsReceived
from manual_actions.outbox import add_to_outbox
from sms_sender import metrics
from sms_sender.adapters.tables import inbound_sequences, incoming_sms
from sms_sender.domain.inbound import IncomingSms
from sms_sender.handlers.sending import SOURCE

logger = logging.getLogger("sms_sender.inbound")


async def record_incoming(engine: AsyncEngine, tenant: str, sms: IncomingSms) -> Envelope[Any] | None:
    """Store ``sms`` for ``tenant`` and stage its SmsReceived (topic sms-inbound), in one transaction.

    Returns the staged envelope, or None when this MessageSid was already stored (Twilio repeats
    a webhook it got no answer to): then nothing is written or published. The envelope's subject
    is the sender's number and its sequence counts the SmsReceived events about that number
    (1, 2, 3... in commit order, shared by every tenant: the subject is the number alone). Logs
    the sid and keyword only: the text and the numbers are personal data.
    """
    received_at = datetime.now(UTC)
    async with engine.connect() as conn, conn.begin() as transaction:
        # Taken first: the row lock on the sender's counter orders this sender's messages
        # until commit, so their outbox rows (and Kafka records) follow their sequence.
        sequence = (
            await conn.execute(
                pg_insert(inbound_sequences)
                .values(subject=sms.from_phone, last_sequence=1)
                .on_conflict_do_update(
                    index_elements=[inbound_sequences.c.subject],
                    set_={"last_sequence": inbound_sequences.c.last_sequence + 1},
                )
                .returning(inbound_sequences.c.last_sequence)
            )
        ).scalar_one()
        envelope = Envelope.wrap(
            SmsReceived(
                message_sid=sms.message_sid,
                from_phone=sms.from_phone,
                to_phone=sms.to_phone,
                body=sms.published_body,
                keyword=sms.keyword.value if sms.keyword else None,
                received_at=received_at,
            ),
            source=SOURCE,
            tenant=tenant,
            subject=sms.from_phone,
            sequence=sequence,
            time=received_at,
        )
        stored = await conn.execute(
            pg_insert(incoming_sms)
            .values(
                message_sid=sms.message_sid,
                tenant_id=tenant,
                account_sid=sms.account_sid,
                from_phone=sms.from_phone,
                to_phone=sms.to_phone,
                body=sms.body,
                keyword=sms.keyword.value if sms.keyword else None,
                sequence=sequence,
                event_id=envelope.id,
                received_at=received_at,
            )
            .on_conflict_do_nothing(index_elements=[incoming_sms.c.message_sid])
            .returning(incoming_sms.c.message_sid)
        )
        if stored.first() is None:
            # A repeated webhook: undo the counter bump too, so sequences stay gapless.
            await transaction.rollback()
            metrics.SMS_INBOUND_DUPLICATES.inc()
            logger.info(
                "incoming sms already stored; nothing published again",
                extra={"tenant": tenant, "sid": sms.message_sid},
            )
            return None
        await add_to_outbox(conn, topics.SMS_INBOUND, envelope)
    keyword = sms.keyword.value if sms.keyword else "none"
    metrics.SMS_INBOUND.labels(keyword).inc()
    logger.info(
        "incoming sms stored; SmsReceived staged",
        extra={"tenant": tenant, "sid": sms.message_sid, "keyword": keyword, "event_id": str(envelope.id)},
    )
    return envelope
