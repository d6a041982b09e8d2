"""Fixtures that run the five services as separate processes against the session's stack."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import SERVICES, ServiceProcesses, free_ports
from tests.e2e.support import run_async


@pytest.fixture(scope="package")
def services(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    run_dir = Path(tmp_path_factory.mktemp("e2e-services"))
    processes = ServiceProcesses(
        stack,
        run_dir,
        ports=dict(zip((spec.name for spec in SERVICES), free_ports(len(SERVICES)), strict=True)),
        database_prefix="e2e_",
    )
    try:
        processes.start()
        yield processes
    finally:
        processes.stop()


async def _issue_token(identity_url: str, tenant: str, role: str) -> str:
    from manual_actions.auth import IdentityStore, Role
    from manual_actions.db import create_engine

    engine = create_engine(identity_url)
    try:
        identity = IdentityStore(engine)
        await identity.create_schema()
        await identity.create_tenant(tenant, tenant.title())
        return await identity.issue_token(tenant, Role(role), None, label="e2e")
    finally:
        await engine.dispose()


@pytest.fixture(scope="package")
def new_tenant(stack: Any, services: ServiceProcesses) -> Callable[[], tuple[str, str]]:
    """Make a fresh tenant; returns (tenant id, admin token)."""

    def make() -> tuple[str, str]:
        tenant = f"t{uuid.uuid4().hex[:10]}"
        identity_url = services.env_for("action-queue")["IDENTITY_DATABASE_URL"]
        return tenant, run_async(_issue_token(identity_url, tenant, "admin"))

    return make
