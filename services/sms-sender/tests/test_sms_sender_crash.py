"""The real sms-sender process is SIGKILLed after Twilio accepted an SMS and before it recorded the
answer (crash point ``dispatcher.after-twilio-answer``, see ``manual_actions.faults``). After a
restart the SMS must not be sent again; the restarted service looks the unknown outcome up in
Twilio's message list (the mock answers it from the messages it created) and reports SmsSent, as
it would against Twilio."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from twilio_harness import eventually, position_group_at_end

from devstack.processes import SERVICES, ServiceProcesses, free_ports
from manual_actions import faults
from manual_actions.contracts import Envelope, SendSms, SmsSent, decode, topics
from manual_actions.twilio_support import CRASH_AFTER_TWILIO_ANSWER

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, envelope: Envelope[Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.SMS_COMMANDS,
            envelope.to_json_bytes(),
            key=envelope.subject.encode(),
            headers=envelope.kafka_headers(),
        )
    finally:
        await producer.stop()


async def _results_for(bootstrap: str, command_id: uuid.UUID) -> list[Envelope[Any]]:
    consumer = AIOKafkaConsumer(
        topics.SMS_RESULTS,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        found: list[Envelope[Any]] = []
        while batch := await consumer.getmany(timeout_ms=1000):
            for records in batch.values():
                found.extend(e for e in (decode(r.value) for r in records) if e.data.command_id == command_id)
        return found
    finally:
        await consumer.stop()


async def test_an_sms_accepted_just_before_a_sigkill_is_found_at_twilio_and_not_resent(
    stack: Any, tmp_path: Path
) -> None:
    group = f"sms-sender-crash-{uuid.uuid4().hex[:8]}"
    await position_group_at_end(stack.kafka_bootstrap, group, topics.SMS_COMMANDS)
    processes = ServiceProcesses(
        stack,
        tmp_path,
        ports=dict(zip((spec.name for spec in SERVICES), free_ports(len(SERVICES)), strict=True)),
        database_prefix="crash_",
        # Reconciliation looks the unknown outcome up at Twilio after this delay (default 30 s).
        extra_env={"CONSUMER_GROUP_ID": group, "RECONCILE_DELAY_SECONDS": "1",
                   "RECONCILE_POLL_INTERVAL_SECONDS": "0.5"},
    )
    public_url = processes.url("sms-sender")
    command = SendSms(
        command_id=uuid.uuid4(),
        action_id=uuid.uuid4(),
        to="+14155550166",
        body="Once only.",
        requested_by=None,
    )
    envelope = Envelope.wrap(
        command, source="action-queue", tenant="tenant-crash", subject=str(command.action_id), sequence=1
    )

    async def requests_for_command() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=stack.twilio_base_url, timeout=10) as mock:
            logged = (await mock.get("/__mock/requests")).json()
        return [
            r
            for r in logged
            if str(r["params"].get("StatusCallback", "")).startswith(public_url)
            and str(r["params"].get("StatusCallback", "")).endswith(f"command_id={command.command_id}")
        ]

    try:
        processes.start(["sms-sender"], env={faults.CRASH_AT_ENV: CRASH_AFTER_TWILIO_ANSWER})
        await _produce(stack.kafka_bootstrap, envelope)
        exit_code = await asyncio.to_thread(processes.wait_exit, "sms-sender")
        assert exit_code == -signal.SIGKILL, (
            f"the crash point was not reached; see {processes.log_path('sms-sender')}"
        )
        [accepted] = await requests_for_command()
        assert accepted["status"] == 201  # Twilio has the SMS; our database does not know it

        processes.start(["sms-sender"])
        [event] = await eventually(
            lambda: _results_for(stack.kafka_bootstrap, command.command_id),
            what="SmsSent after the restart",
            within=60,
        )
        # The recovery pass settled the row 'unknown' (no worker holds it), and before reporting
        # that, the reconciliation loop found the SMS in Twilio's list: to our contact, from our
        # number, our text, created during the request, a sid no other row owns.
        assert isinstance(event.data, SmsSent), event.data
        assert (event.data.message_sid, event.data.to) == (accepted["sid"], command.to)
        assert event.data.delivery_status in ("sent", "delivered")
        assert event.sequence == 1
        await asyncio.sleep(1.0)
        assert len(await requests_for_command()) == 1  # never resent
        async with httpx.AsyncClient(base_url=stack.twilio_base_url, timeout=10) as mock:
            logged = (await mock.get("/__mock/requests")).json()
        lookups = [r for r in logged if r["method"] == "GET" and r["path"].endswith("/Messages.json")]
        assert [r["status"] for r in lookups if "To=%2B14155550166" in r["query"]] == [200]
        # The mock's status callbacks went to the dead process (refused) and are not retried, as at
        # Twilio, so the lookup's SmsSent is the only result.
        assert [e.type for e in await _results_for(stack.kafka_bootstrap, command.command_id)] == ["SmsSent"]
    finally:
        processes.stop()
