"""The dialer's HTTP surface: Twilio's voice webhooks (signed, no bearer token).

``/health``, ``/ready`` and ``/metrics`` come from ``manual_actions.http.create_app``.
"""

# No ``from __future__ import annotations``: FastAPI must see the closures' dependencies
# (the signature check built per app) as objects, not as strings it would resolve in module globals.

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from dialer.handlers.calls import bridge_twiml, handle_call_status
from dialer.handlers.placing import CONNECT_PATH, STATUS_CALLBACK_PATH
from manual_actions.auth import IdentityStore
from manual_actions.twilio_support import (
    TwilioParams,
    TwilioSettings,
    required_param,
    twilio_request_verifier,
    unknown_command,
)

CommandId = Annotated[uuid.UUID, Query(description="The PlaceCall command this call was placed for.")]


def create_router(settings: TwilioSettings, engine: AsyncEngine, identity: IdentityStore) -> APIRouter:
    """The voice webhooks (the identity store is unused: every route finds its tenant through its
    command's row)."""
    router = APIRouter(tags=["twilio webhooks"])
    verified = twilio_request_verifier(settings)
    Signed = Annotated[TwilioParams, Depends(verified)]

    @router.post(
        CONNECT_PATH,
        summary="TwiML for the answered agent: dial the contact",
        response_class=Response,
        responses={200: {"content": {"application/xml": {}}},
                   403: {"description": "Invalid X-Twilio-Signature (problem+json)."}},
    )
    async def voice_connect(params: Signed, command_id: CommandId) -> Response:
        twiml = await bridge_twiml(engine, command_id, caller_id=settings.twilio_from_number)
        return Response(content=twiml, media_type="application/xml")

    @router.post(
        STATUS_CALLBACK_PATH,
        status_code=204,
        summary="Twilio call status callback",
        responses={403: {"description": "Invalid X-Twilio-Signature (problem+json)."},
                   404: {"description": "No call for this command (problem+json)."}},
    )
    async def call_status(params: Signed, command_id: CommandId) -> Response:
        """Record the status; the first final one (completed, busy, no-answer, failed, canceled)
        publishes CallCompleted with the call's duration."""
        status = required_param(params, "CallStatus")
        if not await handle_call_status(engine, command_id, status, params):
            raise unknown_command(command_id, "call")
        return Response(status_code=204)

    return router
