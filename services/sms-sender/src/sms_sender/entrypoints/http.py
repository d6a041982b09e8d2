"""sms-sender's HTTP surface: Twilio's webhooks (signed, no bearer token): the status callbacks of
the SMS we send, and the incoming-message webhook of the SMS contacts send us.

``/health``, ``/ready`` and ``/metrics`` come from ``manual_actions.http.create_app``.
"""

# No ``from __future__ import annotations``: FastAPI must see the closures' dependencies
# (the signature check built per app) as objects, not as strings it would resolve in module globals.

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.ext.asyncio import AsyncEngine
from twilio.twiml.messaging_response import MessagingResponse

from manual_actions.auth import IdentityStore
from manual_actions.http import problem
from manual_actions.logging import log_context
from manual_actions.twilio_support import (
    TwilioParams,
    TwilioSettings,
    required_param,
    twilio_request_verifier,
    unknown_command,
)
from sms_sender import metrics
from sms_sender.domain.inbound import InvalidField, parse_incoming
from sms_sender.handlers.callbacks import handle_status_callback
from sms_sender.handlers.inbound import record_incoming
from sms_sender.handlers.sending import STATUS_CALLBACK_PATH

CommandId = Annotated[uuid.UUID, Query(description="The SendSms command this SMS was sent for.")]
Tenant = Annotated[str, Path(description="The tenant whose Twilio number this webhook is configured on.")]

INBOUND_PATH = "/v1/twilio/inbound/{tenant}"
"""Twilio's "A message comes in" webhook of a tenant's number: ``PUBLIC_BASE_URL`` + this path."""

# An empty TwiML answer: Twilio sends nothing back to the contact on our behalf. (Its own replies to
# STOP/START/HELP are sent by Twilio before the webhook and are not affected.)
EMPTY_TWIML = MessagingResponse().to_xml()


def create_router(settings: TwilioSettings, engine: AsyncEngine, identity: IdentityStore) -> APIRouter:
    """The webhook routes. The incoming-message route checks its tenant with
    ``identity.tenant_exists`` (the identity store the shared wiring opens on first use)."""
    router = APIRouter(tags=["twilio webhooks"])
    Signed = Annotated[TwilioParams, Depends(twilio_request_verifier(settings))]

    @router.post(
        STATUS_CALLBACK_PATH,
        status_code=204,
        summary="Twilio message status callback",
        responses={403: {"description": "Invalid X-Twilio-Signature (problem+json)."},
                   404: {"description": "No SMS for this command (problem+json)."}},
    )
    async def sms_status(params: Signed, command_id: CommandId) -> Response:
        """Record the status; the first sent/delivered publishes SmsSent, failed/undelivered SmsFailed."""
        status = required_param(params, "MessageStatus")
        if not await handle_status_callback(engine, command_id, status, params):
            raise unknown_command(command_id, "SMS")
        return Response(status_code=204)

    problem_json: dict[str, Any] = {"content": {"application/problem+json": {}}}

    @router.post(
        INBOUND_PATH,
        response_class=Response,
        summary="Twilio incoming-message webhook",
        responses={
            200: {"description": "Stored (or already stored): empty TwiML.", "content": {"text/xml": {}}},
            400: {"description": "MessageSid, From or To missing or malformed (problem+json).",
                  **problem_json},
            403: {"description": "Invalid X-Twilio-Signature (problem+json).", **problem_json},
            404: {"description": "No such tenant (problem+json).", **problem_json},
        },
    )
    async def inbound_sms(params: Signed, tenant: Tenant) -> Response:
        """Store the message once per MessageSid and publish SmsReceived on sms-inbound (with its
        keyword: opt_out, opt_in, help or none); a repeated webhook publishes nothing again. Both
        are answered with an empty TwiML ``<Response/>``, so Twilio sends no automatic reply."""
        with log_context(tenant=tenant):
            if not await identity.tenant_exists(tenant):
                metrics.SMS_INBOUND_REFUSED.labels("unknown_tenant").inc()
                raise problem(404, "Unknown tenant", f"No tenant {tenant!r} exists.", field="path.tenant")
            try:
                sms = parse_incoming(params)
            except InvalidField as invalid:
                metrics.SMS_INBOUND_REFUSED.labels("invalid_field").inc()
                raise problem(
                    400, f"Invalid {invalid.field}", invalid.message, field=f"form.{invalid.field}"
                ) from None
            await record_incoming(engine, tenant, sms)
        return Response(content=EMPTY_TWIML, media_type="text/xml")

    return router
