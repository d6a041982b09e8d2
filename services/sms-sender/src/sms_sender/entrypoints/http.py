"""sms-sender's HTTP surface: Twilio's status callbacks (signed, no bearer token).

``/health``, ``/ready`` and ``/metrics`` come from ``manual_actions.http.create_app``.
"""

# No ``from __future__ import annotations``: FastAPI must see the closures' dependencies
# (the signature check built per app) as objects, not as strings it would resolve in module globals.

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from manual_actions.twilio_support import (
    TwilioParams,
    TwilioSettings,
    required_param,
    twilio_request_verifier,
    unknown_command,
)
from sms_sender.handlers.callbacks import handle_status_callback
from sms_sender.handlers.sending import STATUS_CALLBACK_PATH

CommandId = Annotated[uuid.UUID, Query(description="The SendSms command this SMS was sent for.")]


def create_router(settings: TwilioSettings, engine: AsyncEngine) -> APIRouter:
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

    return router
