"""``ma-admin``: manage tenants and API tokens in the identity database.

    ma-admin init
    ma-admin tenant create <id> --name N
    ma-admin token create --tenant T --role admin|manager|agent [--user UUID] [--label L]
    ma-admin token list --tenant T
    ma-admin token revoke <token-id>

The database is ``IDENTITY_DATABASE_URL`` (same default as the services). ``token create`` prints
only the token, so it can be captured: ``TOKEN=$(ma-admin token create ...)``; it is shown once
and cannot be recovered. Exit status: 0 on success, 1 when the request cannot be done (unknown
tenant or token, invalid id), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence

from manual_actions.auth.store import IdentityStore, Role, UnknownTenantError, UnknownTokenError
from manual_actions.db import create_engine, ensure_database
from manual_actions.settings import ServiceSettings


def _default_url() -> str:
    default = ServiceSettings.model_fields["identity_database_url"].default
    return os.environ.get("IDENTITY_DATABASE_URL") or str(default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ma-admin", description="Manage Manual Actions tenants and API tokens."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("init", help="create the identity database and its tables (idempotent)")

    tenant = commands.add_parser("tenant", help="manage tenants").add_subparsers(dest="action", required=True)
    tenant_create = tenant.add_parser("create", help="create a tenant (or rename an existing one)")
    tenant_create.add_argument("tenant_id")
    tenant_create.add_argument("--name", required=True)

    token = commands.add_parser("token", help="manage API tokens").add_subparsers(
        dest="action", required=True
    )
    token_create = token.add_parser("create", help="issue a token and print it (shown once)")
    token_create.add_argument("--tenant", required=True)
    token_create.add_argument("--role", required=True, choices=[role.value for role in Role])
    token_create.add_argument("--user", type=uuid.UUID, default=None, help="user id the token acts as")
    token_create.add_argument("--label", default="", help="what the token is for")
    token_list = token.add_parser("list", help="list a tenant's tokens (ids and metadata, never secrets)")
    token_list.add_argument("--tenant", required=True)
    token_revoke = token.add_parser("revoke", help="revoke a token by id (the part after 'ma_')")
    token_revoke.add_argument("token_id")
    return parser


async def _run(args: argparse.Namespace, url: str) -> int:
    if args.command == "init":
        await ensure_database(url)
    engine = create_engine(url, pool_size=1)
    store = IdentityStore(engine)
    try:
        if args.command == "init":
            await store.create_schema()
            print("identity schema ready", file=sys.stderr)
        elif args.command == "tenant":
            await store.create_tenant(args.tenant_id, args.name)
            print(f"tenant {args.tenant_id} ready", file=sys.stderr)
        elif args.action == "create":
            print(await store.issue_token(args.tenant, Role(args.role), args.user, args.label))
        elif args.action == "list":
            for info in await store.list_tokens(args.tenant):
                revoked = info.revoked_at.isoformat() if info.revoked_at else "-"
                print(
                    "\t".join(
                        [
                            info.id,
                            info.role.value,
                            str(info.user_id or "-"),
                            info.created_at.isoformat(),
                            revoked,
                            info.label,
                        ]
                    )
                )
        else:
            await store.revoke_token(args.token_id)
            print(f"token {args.token_id} revoked", file=sys.stderr)
    except (UnknownTenantError, UnknownTokenError, ValueError) as exc:
        print(f"ma-admin: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    return 0


async def run(argv: Sequence[str] | None = None, database_url: str | None = None) -> int:
    """Run one ``ma-admin`` command in the current event loop; returns the exit status.

    ``database_url`` defaults to ``IDENTITY_DATABASE_URL`` (then to the services' default).
    Usage errors exit through argparse (``SystemExit(2)``).
    """
    args = _parser().parse_args(argv)
    return await _run(args, database_url or _default_url())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ma-admin``; returns the exit status."""
    return asyncio.run(run(argv))


if __name__ == "__main__":
    sys.exit(main())
