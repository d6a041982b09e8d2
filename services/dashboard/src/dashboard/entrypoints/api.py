"""HTTP API of the dashboard: ``GET /v1/pending`` and the widget page ``GET /``.

The counts come from the faust ``pending`` table held in this process (see ``streams``); the
tenant is always the token's. Every role may read its tenant's totals; admins and managers also
see every assignee's counts, an agent only their own.

Response shape (the walking skeleton's contract): ``{total, calls, sms, by_assignee: {user_id:
{total, calls, sms}}}``.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from dashboard.domain.pending import Counts, TenantPending
from dashboard.entrypoints.streams import DashboardStreams, TenantNotLocal
from manual_actions.auth import IdentityStore, Principal, Role, require_roles
from manual_actions.http import ReadinessCheck, create_app, problem

router = APIRouter()

AnyRole = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.MANAGER, Role.AGENT))]

# The widget page and its script are static; the script is served separately so that the page
# can forbid inline scripts (Content-Security-Policy) and the token never meets inline code.
_WIDGET_CSP = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'"


class CountsOut(BaseModel):
    total: int = Field(description="Pending actions (calls + sms).")
    calls: int = Field(description="Pending manual calls.")
    sms: int = Field(description="Pending manual SMS.")

    @classmethod
    def of(cls, counts: Counts) -> CountsOut:
        return cls(total=counts.total, calls=counts.calls, sms=counts.sms)


class PendingOut(BaseModel):
    """The tenant's pending manual actions (unassigned ones count in the totals only)."""

    total: int = Field(description="All pending actions of the tenant.")
    calls: int = Field(description="Pending manual calls.")
    sms: int = Field(description="Pending manual SMS.")
    by_assignee: dict[str, CountsOut] = Field(
        description="Per assignee user id. Admins and managers see every assignee with something "
        "pending; an agent sees exactly one entry, their own (zeros when nothing is pending)."
    )


def pending_view(state: TenantPending, principal: Principal) -> PendingOut:
    """What ``principal`` may see of its tenant's counts."""
    if state.tenant != principal.tenant:
        raise ValueError("counts of another tenant")  # defence in depth: never serve them
    if principal.role is Role.AGENT:
        if principal.user_id is None:
            visible = {}
        else:
            user = str(principal.user_id)
            visible = {user: state.by_assignee.get(user, Counts())}
    else:
        visible = dict(state.by_assignee)
    return PendingOut(
        total=state.all.total,
        calls=state.all.calls,
        sms=state.all.sms,
        by_assignee={user_id: CountsOut.of(counts) for user_id, counts in sorted(visible.items())},
    )


async def _streams(request: Request) -> DashboardStreams:
    streams = request.app.state.streams
    assert isinstance(streams, DashboardStreams)
    return streams


@router.get(
    "/v1/pending",
    response_model=PendingOut,
    summary="Pending manual actions of the caller's tenant",
    responses={503: {"description": "Counts not available here right now (starting, rebalancing)."}},
)
async def get_pending(
    principal: AnyRole, response: Response, streams: Annotated[DashboardStreams, Depends(_streams)]
) -> PendingOut:
    try:
        state = streams.pending_for(principal.tenant)
    except TenantNotLocal as exc:
        raise problem(
            503, "Counts not available", f"The pending counts cannot be served right now: {exc}.",
            headers={"Retry-After": "2"},
        ) from exc
    response.headers["Cache-Control"] = "no-store"
    return pending_view(state, principal)


def _asset(name: str) -> str:
    return resources.files("dashboard.entrypoints").joinpath("widget", name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def widget_page() -> HTMLResponse:
    return HTMLResponse(
        _asset("index.html"),
        headers={"Content-Security-Policy": _WIDGET_CSP, "Cache-Control": "no-cache"},
    )


@router.get("/widget.js", include_in_schema=False)
async def widget_script() -> Response:
    return Response(
        _asset("widget.js"),
        media_type="text/javascript",
        headers={"Content-Security-Policy": _WIDGET_CSP, "Cache-Control": "no-cache"},
    )


def build_app(streams: DashboardStreams, identity: IdentityStore) -> FastAPI:
    """The dashboard's HTTP app: shared plumbing (health, ready, metrics, problem+json) plus our routes.

    ``/ready`` passes once the faust app runs, its tables are recovered and the identity database
    (which checks the bearer tokens) answers.
    """
    checks: list[tuple[str, ReadinessCheck]] = [
        ("stream-processor", streams.check_ready),
        ("identity", identity.ping),
    ]
    app = create_app("dashboard", readiness_checks=checks)
    app.state.streams = streams
    app.state.identity = identity
    app.include_router(router)
    return app
