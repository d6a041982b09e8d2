"""``ma-admin`` against the real PostgreSQL (``stack`` fixture)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from manual_actions.auth import IdentityStore, Role, parse_token
from manual_actions.auth.cli import run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def identity_url(stack: Any) -> str:
    # A database the stack did not create, so that ``init`` has to create it.
    url = make_url(stack.database_url("identity_test")).set(database="identity_cli_test")
    return url.render_as_string(hide_password=False)


def split(token: str) -> tuple[str, str]:
    parsed = parse_token(token)
    assert parsed is not None, token
    return parsed


async def authenticate(url: str, token: str) -> Any:
    engine = create_async_engine(url)
    try:
        return await IdentityStore(engine).authenticate(token)
    finally:
        await engine.dispose()


async def test_init_tenant_token_list_revoke(identity_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:10]}"
    user = uuid.uuid4()
    assert await run(["init"], identity_url) == 0
    assert await run(["init"], identity_url) == 0
    assert await run(["tenant", "create", tenant, "--name", "CLI tenant"], identity_url) == 0
    capsys.readouterr()

    argv = ["token", "create", "--tenant", tenant, "--role", "agent", "--user", str(user), "--label", "desk"]
    assert await run(argv, identity_url) == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out == token + "\n"  # only the token on stdout
    principal = await authenticate(identity_url, token)
    assert principal is not None
    assert (principal.tenant, principal.role, principal.user_id) == (tenant, Role.AGENT, user)

    assert await run(["token", "list", "--tenant", tenant], identity_url) == 0
    listing = capsys.readouterr().out
    token_id = split(token)[0]
    assert token_id in listing and "desk" in listing and token not in listing

    assert await run(["token", "revoke", token_id], identity_url) == 0
    assert await authenticate(identity_url, token) is None


async def test_errors_exit_1_with_a_message(identity_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["init"], identity_url) == 0
    capsys.readouterr()
    argv = ["token", "create", "--tenant", f"missing-{uuid.uuid4().hex[:8]}", "--role", "admin"]
    assert await run(argv, identity_url) == 1
    assert "no tenant" in capsys.readouterr().err
    assert await run(["token", "revoke", "ffffffffffffffff"], identity_url) == 1
    assert await run(["tenant", "create", "bad id", "--name", "x"], identity_url) == 1
    with pytest.raises(SystemExit) as usage:
        await run(["token", "create", "--tenant", "t", "--role", "root"], identity_url)
    assert usage.value.code == 2


async def test_console_script_reads_identity_database_url(identity_url: str) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:10]}"
    assert await run(["init"], identity_url) == 0
    assert await run(["tenant", "create", tenant, "--name", "Script"], identity_url) == 0
    # One real process (imports are slow): the installed entry point with the URL from the env.
    script = Path(sys.executable).parent / "ma-admin"
    env = {**os.environ, "IDENTITY_DATABASE_URL": identity_url}
    created = await asyncio.to_thread(
        subprocess.run,
        [str(script), "token", "create", "--tenant", tenant, "--role", "manager"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    token = created.stdout.strip()
    assert parse_token(token) is not None and created.stdout == token + "\n"
